"""Per-step routing of tokens to adapter slots, and the metadata kernels need.

A :class:`LoRABatch` is built once per forward step and shared by every layer. It holds,
on the device:

- ``token_slots``   ``int32 [capacity]``: slot of each token, ``-1`` = no adapter (and
  every position past the tokens given).
- ``sorted_tokens`` ``int32 [capacity]``: token ids grouped by slot (stable), tokens with
  an adapter first.
- ``tile_map``      ``int32 [len(TILE_SIZES), 3, max_tiles]``: for each tile size ``BM`` in
  :data:`TILE_SIZES`, the tiles of a segmented GEMM: ``(slot, row_start, row_end)`` into
  ``sorted_tokens``, each tile holding at most ``BM`` tokens of one slot; unused tiles have
  slot ``-1`` and walk the tokens without a slot in ``BM``-row steps. A kernel launched over
  ``cdiv(T, BM) + min(T, num_slots)`` programs covers every tile of any batch of ``T``
  tokens (and, with its unused tiles, every token below ``T`` without a slot), so grids
  never depend on batch contents.

All of it is computed with tensor ops on the batch's device, without host reads, so a
static batch (:meth:`LoRABatch.empty`) can be refilled with :meth:`LoRABatch.update_`
between CUDA-graph replays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TILE_SIZES: tuple[int, ...] = (16, 32, 64, 128)

__all__ = ["LoRABatch", "TILE_SIZES", "max_tiles", "tile_index"]

_NO_SLOT = 2**31 - 1


def max_tiles(capacity: int) -> int:
    """Length of the tile axis of a batch with ``capacity`` tokens."""
    return -(-capacity // TILE_SIZES[0]) + capacity


def tile_index(block_m: int) -> int:
    """Row of ``tile_map`` for tile size ``block_m``."""
    try:
        return TILE_SIZES.index(block_m)
    except ValueError:
        raise ValueError(f"block_m must be one of {TILE_SIZES}, got {block_m}") from None


def _static_layout(capacity: int) -> tuple[int, int, int]:
    """Offsets of ``sorted_tokens`` and ``tile_map`` and the total length (int32 elements) of
    a static batch's single buffer; every part starts on a 16-byte boundary."""
    up = -(-capacity // 4) * 4
    return up, 2 * up, 2 * up + len(TILE_SIZES) * 3 * max_tiles(capacity)


def _metadata(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted token order, tile map and a packed segment summary for ``slots``.

    Parameters
    ----------
    slots : Tensor [C] int
        Slot per token, ``-1`` = none.

    Returns
    -------
    sorted_tokens : Tensor [C] int32
    tile_map : Tensor [len(TILE_SIZES), 3, max_tiles(C)] int32
    segments : Tensor [3, C] int64
        ``(slot, start, count)`` per segment (slot ``-1`` past the last segment).
    """
    dev = slots.device
    cap = slots.numel()
    key = torch.where(slots < 0, _NO_SLOT, slots.to(torch.int64))  # [C]
    sorted_key, order = torch.sort(key, stable=True)  # [C]
    valid = sorted_key != _NO_SLOT
    prev = torch.cat([sorted_key.new_full((1,), -1), sorted_key[:-1]])
    new = valid & (sorted_key != prev)
    seg_id = torch.cumsum(new.to(torch.int64), 0) - 1  # [C]
    dump = torch.full_like(seg_id, cap)
    counts = torch.zeros(cap + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, torch.where(valid, seg_id, dump), valid.to(torch.int64))
    counts = counts[:cap]  # [C]
    seg_slot = torch.full((cap + 1,), -1, dtype=torch.int64, device=dev)
    seg_slot.scatter_(0, torch.where(new, seg_id, dump), sorted_key)
    seg_slot = seg_slot[:cap]  # [C]
    seg_start = torch.cumsum(counts, 0) - counts  # [C]

    nt = max_tiles(cap)
    bms = torch.tensor(TILE_SIZES, dtype=torch.int64, device=dev)[:, None]  # [B, 1]
    ntiles = (counts[None, :] + bms - 1) // bms  # [B, C]
    tile_cum = torch.cumsum(ntiles, 1)  # [B, C]
    j = torch.arange(nt, dtype=torch.int64, device=dev).expand(len(TILE_SIZES), nt).contiguous()
    g = torch.searchsorted(tile_cum, j, right=True)  # [B, NT]
    used = g < cap
    gc = g.clamp(max=max(cap - 1, 0))
    if cap == 0:
        tile_map = torch.zeros(len(TILE_SIZES), 3, 0, dtype=torch.int32, device=dev)
    else:
        first_tile = tile_cum.gather(1, gc) - ntiles.gather(1, gc)  # [B, NT]
        # unused tiles walk the tokens without a slot, which sort last (by token id)
        spare = valid.sum() + (j - tile_cum[:, -1:]) * bms  # [B, NT]
        start = torch.where(used, seg_start[gc] + (j - first_tile) * bms, spare)
        end = torch.where(used, torch.minimum(start + bms, seg_start[gc] + counts[gc]),
                          torch.clamp(spare + bms, max=cap))
        tslot = torch.where(used, seg_slot[gc], -1)
        tile_map = torch.stack([tslot, start, end], 1).to(torch.int32)  # [B, 3, NT]
    segments = torch.stack([seg_slot, seg_start, counts])  # [3, C]
    return order.to(torch.int32), tile_map, segments


def _host_segments(segments: torch.Tensor) -> tuple[tuple[int, int, int], ...]:
    rows = segments.tolist()
    out = []
    for slot, start, count in zip(*rows):
        if slot < 0:
            break
        out.append((slot, start, start + count))
    return tuple(out)


def _device(device: torch.device | str | None) -> torch.device:
    """``device`` with the current CUDA index filled in (``cuda`` -> ``cuda:N``)."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _as_slot_tensor(name: str, token_slots: object) -> torch.Tensor:
    if isinstance(token_slots, torch.Tensor):
        t = token_slots
    elif isinstance(token_slots, Sequence) and not isinstance(token_slots, str):
        t = torch.tensor(list(token_slots), dtype=torch.int64)
    else:
        raise TypeError(
            f"{name} must be an int Tensor or a sequence of ints, got {type(token_slots).__name__}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D [T], got shape {list(t.shape)}")
    return t


class LoRABatch:
    """Which adapter slot each token of a step uses, plus kernel metadata.

    Build one per forward step with :meth:`from_token_adapters` or :meth:`from_segments`,
    or once with :meth:`empty` and refill it in place with :meth:`update_` (CUDA graphs).

    Attributes
    ----------
    device : torch.device
    capacity : int
        Length of the token buffers (``T`` for a built batch, ``max_tokens`` for a static one).
    num_tokens : int
        Tokens given in the last build / update (the rest have slot ``-1``).
    is_static : bool
        Built by :meth:`empty`: kernels size their grids from ``capacity``-independent maxima.
    token_slots, sorted_tokens, tile_map : Tensor
        See the module docstring.
    """

    __slots__ = (
        "device",
        "capacity",
        "num_tokens",
        "is_static",
        "token_slots",
        "sorted_tokens",
        "tile_map",
        "_host_segments",
        "max_slot",
        "_buf",
        "_stages",
        "_stage_events",
        "_next_stage",
        "__weakref__",
    )

    def __init__(self) -> None:
        raise TypeError(
            "use LoRABatch.from_token_adapters, LoRABatch.from_segments or LoRABatch.empty"
        )

    @classmethod
    def _new(cls, device: torch.device, capacity: int, is_static: bool) -> LoRABatch:
        self = object.__new__(cls)
        self.device = device
        self.capacity = capacity
        self.num_tokens = 0
        self.is_static = is_static
        self._host_segments = ()
        self.max_slot = -1
        return self

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_token_adapters(cls, token_slots: torch.Tensor | Sequence[int]) -> LoRABatch:
        """Batch from one slot id per token.

        Parameters
        ----------
        token_slots : Tensor [T] int (or a sequence of ints)
            Slot of each token, ``-1`` = no adapter. The batch lives on this tensor's device.

        Synchronizes with the device once (to check the ids and keep a host summary).
        """
        t = _as_slot_tensor("token_slots", token_slots)
        batch = cls._new(t.device, t.numel(), is_static=False)
        batch._fill(t, name="token_slots")
        return batch

    @classmethod
    def from_segments(
        cls,
        seq_lens: torch.Tensor | Sequence[int],
        seq_slots: torch.Tensor | Sequence[int],
        device: torch.device | str | None = None,
    ) -> LoRABatch:
        """Batch from sequences: ``seq_lens[i]`` consecutive tokens use slot ``seq_slots[i]``.

        Parameters
        ----------
        seq_lens : Tensor [B] int or sequence
            Tokens per sequence (>= 0), in token order.
        seq_slots : Tensor [B] int or sequence
            Slot of each sequence, ``-1`` = no adapter.
        device : optional
            Where the batch lives (default: the device of ``seq_lens`` if a tensor, else CPU).
        """
        lens = _as_slot_tensor("seq_lens", seq_lens)
        slots = _as_slot_tensor("seq_slots", seq_slots)
        if lens.numel() != slots.numel():
            raise ValueError(
                "seq_lens and seq_slots must have the same length, got "
                f"{lens.numel()} and {slots.numel()}"
            )
        lens_host = lens.cpu()
        if lens_host.numel() and int(lens_host.min()) < 0:
            raise ValueError("seq_lens must be >= 0")
        if device is None:
            device = lens.device
        token_slots = torch.repeat_interleave(
            slots.cpu().to(torch.int64), lens_host.to(torch.int64)
        )
        batch = cls._new(_device(device), token_slots.numel(), is_static=False)
        batch._fill(token_slots, name="seq_slots")
        return batch

    @classmethod
    def empty(cls, max_tokens: int, device: torch.device | str | None = None) -> LoRABatch:
        """Static batch of ``max_tokens`` tokens (all without adapter) for CUDA graphs.

        Capture the graph with it, then call :meth:`update_` before each replay.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
        dev = _device(device)
        batch = cls._new(dev, max_tokens, is_static=True)
        o1, o2, total = _static_layout(max_tokens)
        nt = max_tiles(max_tokens)
        # [total] int32: token_slots | sorted_tokens | tile_map, each 16-byte aligned
        batch._buf = torch.empty(total, dtype=torch.int32, device=dev)
        batch.token_slots = batch._buf[:max_tokens]
        batch.sorted_tokens = batch._buf[o1 : o1 + max_tokens]
        batch.tile_map = batch._buf[o2:].view(len(TILE_SIZES), 3, nt)
        pin = dev.type == "cuda"
        batch._stages = [torch.empty(total, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        batch._stage_events = [None, None]
        batch._next_stage = 0
        batch._fill(torch.empty(0, dtype=torch.int32), name="token_slots")
        return batch

    def update_(self, token_slots: torch.Tensor | Sequence[int]) -> LoRABatch:
        """Refill a static batch in place with up to ``capacity`` tokens.

        Positions past ``len(token_slots)`` get slot ``-1``. Buffers keep their storage, so
        graphs captured with this batch replay with the new routing. A host tensor or list
        is processed on the host and uploaded with one asynchronous copy from pinned memory
        (the host does not wait for the GPU's queued work); a device tensor is processed on
        the device without reading it back (the host summary used for slot-range checks is
        then unknown).
        """
        if not self.is_static:
            raise TypeError("update_ needs a static batch from LoRABatch.empty")
        t = _as_slot_tensor("token_slots", token_slots)
        if t.numel() > self.capacity:
            raise ValueError(
                f"token_slots has {t.numel()} tokens, the batch holds at most {self.capacity}"
            )
        self._fill(t, name="token_slots")
        return self

    # ---------------------------------------------------------------- internals
    def _fill(self, t: torch.Tensor, name: str) -> None:
        on_host = t.device.type == "cpu"
        n = t.numel()
        cap = self.capacity
        if on_host:
            if n and int(t.min()) < -1:
                raise ValueError(f"{name} must be >= -1 (slot id or -1), got {int(t.min())}")
        work_dev = t.device if (on_host or not self.is_static) else self.device
        slots = torch.full((cap,), -1, dtype=torch.int32, device=work_dev)
        slots[:n] = t.to(device=work_dev, dtype=torch.int32)
        sorted_tokens, tile_map, segments = _metadata(slots)
        if on_host:
            self._host_segments = _host_segments(segments)
        elif not self.is_static:
            packed = torch.cat(
                [segments.flatten(), t.amin(0, keepdim=True).to(torch.int64)]
                if n
                else [segments.flatten()]
            ).cpu()  # the one sync
            if n and int(packed[-1]) < -1:
                raise ValueError(f"{name} must be >= -1 (slot id or -1), got {int(packed[-1])}")
            self._host_segments = _host_segments(packed[: 3 * cap].view(3, cap))
        else:
            self._host_segments = None
        hs = self._host_segments
        self.max_slot = max((s for s, _, _ in hs), default=-1) if hs is not None else None
        self.num_tokens = n
        if self.is_static and on_host:
            self._upload(slots, sorted_tokens, tile_map)
        elif self.is_static:
            self.token_slots.copy_(slots)
            self.sorted_tokens.copy_(sorted_tokens)
            self.tile_map.copy_(tile_map)
        else:
            dev = self.device
            self.token_slots = slots.to(dev)
            self.sorted_tokens = sorted_tokens.to(dev)
            self.tile_map = tile_map.to(dev)

    def _upload(self, slots: torch.Tensor, sorted_tokens: torch.Tensor, tile_map: torch.Tensor):
        """One host-to-device copy of the three buffers through a pinned staging buffer.

        Two staging buffers alternate; before one is rewritten, the copy that last read it
        must have run (its event), so the host waits at most for the copy queued two
        updates ago, never for the current stream's work.
        """
        i = self._next_stage
        self._next_stage = 1 - i
        stage, ev = self._stages[i], self._stage_events[i]
        if ev is not None:
            ev.synchronize()
        cap = self.capacity
        o1, o2, _ = _static_layout(cap)
        stage[:cap].copy_(slots)
        stage[o1 : o1 + cap].copy_(sorted_tokens)
        stage[o2:].copy_(tile_map.flatten())
        if self._buf.device.type == "cuda":
            self._buf.copy_(stage, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            self._stage_events[i] = ev
        else:
            self._buf.copy_(stage)

    @property
    def host_segments(self) -> tuple[tuple[int, int, int], ...] | None:
        """``(slot, start, end)`` of ``sorted_tokens`` per used slot, if the host knows them."""
        return self._host_segments

    def __len__(self) -> int:
        return self.capacity

    def __repr__(self) -> str:
        kind = "static" if self.is_static else "built"
        segs = "?" if self._host_segments is None else len(self._host_segments)
        return (
            f"LoRABatch({kind}, device={self.device}, tokens={self.num_tokens}/{self.capacity}, "
            f"slots_used={segs})"
        )
