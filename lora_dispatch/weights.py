"""Stacked LoRA weights of one LoRA-enabled linear layer, for every adapter slot.

Storage layout (chosen for one-launch fused shrink / expand):

- ``lora_a``   ``[num_slots, num_slices * max_rank, in_features]``. Slot ``s`` of rank ``r``
  keeps all slices' A matrices packed densely along the rank axis: rows
  ``[i * r, (i + 1) * r)`` hold slice ``i``. One shrink GEMM over the first
  ``num_slices * r`` rows therefore covers q, k and v together. Rows past
  ``num_slices * r`` are zero.
- ``lora_b``   ``[num_slots, sum(out_features), max_rank]``. Rows ``[off_i, off_i + out_i)``
  hold slice ``i``'s B, columns ``[0, r)`` used, the rest zero. This is the block-diagonal
  fused B without the off-diagonal zeros.
- ``ranks``    ``int32 [num_slots]`` (0 = empty slot) and ``scalings`` ``float32
  [num_slots, num_slices]`` live on the device, so kernels read them without host syncs;
  host mirrors (:attr:`host_ranks`) serve the host-side paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["LoRAWeights", "SUPPORTED_DTYPES"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class LoRAWeights:
    """LoRA A/B weights of one linear layer for ``num_slots`` adapter slots.

    Parameters
    ----------
    num_slots : int
        Number of adapter slots (slot ids ``0 .. num_slots - 1``).
    in_features : int
        Input width K of the layer.
    out_features : int or sequence of int
        Output width of each slice. A fused projection (q/k/v, gate/up) has several;
        slice ``i`` occupies columns ``[off_i, off_i + out_i)`` of the layer output.
    max_rank : int
        Largest rank any slot may hold.
    dtype : torch.dtype
        float16, bfloat16 or float32.
    device : torch.device or str, optional
        Where the weights live (default: CPU).
    """

    def __init__(
        self,
        num_slots: int,
        in_features: int,
        out_features: int | Sequence[int],
        max_rank: int,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_slots = _positive_int("num_slots", num_slots)
        self.in_features = _positive_int("in_features", in_features)
        self.max_rank = _positive_int("max_rank", max_rank)
        if isinstance(out_features, int) and not isinstance(out_features, bool):
            out_features = (out_features,)
        if not isinstance(out_features, Sequence) or len(out_features) == 0:
            raise TypeError("out_features must be an int or a non-empty sequence of ints")
        self.out_features: tuple[int, ...] = tuple(
            _positive_int(f"out_features[{i}]", o) for i, o in enumerate(out_features)
        )
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

        self.num_slices = len(self.out_features)
        offsets = [0]
        for o in self.out_features:
            offsets.append(offsets[-1] + o)
        self.slice_offsets: tuple[int, ...] = tuple(offsets[:-1])
        self.total_out = offsets[-1]

        dev = self.device
        # [L, S*R, K]
        self.lora_a = torch.zeros(
            num_slots, self.num_slices * max_rank, in_features, dtype=dtype, device=dev
        )
        # [L, N, R]
        self.lora_b = torch.zeros(num_slots, self.total_out, max_rank, dtype=dtype, device=dev)
        # [L]
        self.ranks = torch.zeros(num_slots, dtype=torch.int32, device=dev)
        # [L, S]
        self.scalings = torch.zeros(num_slots, self.num_slices, dtype=torch.float32, device=dev)
        # [S + 1] column offsets of the slices, then the total
        self.slice_bounds = torch.tensor(offsets, dtype=torch.int32, device=dev)
        self.host_ranks: list[int] = [0] * num_slots
        self.host_scalings: list[tuple[float, ...]] = [(0.0,) * self.num_slices] * num_slots
        self.version = 0

    # ------------------------------------------------------------------ loading
    def _check_slot(self, slot: object) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise TypeError(f"slot must be an int, got {type(slot).__name__}")
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot must be in [0, {self.num_slots}), got {slot}")
        return slot

    def _per_slice(self, name: str, value: object) -> list[torch.Tensor | None]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, Sequence) and not isinstance(value, str):
            items = list(value)
            if len(items) != self.num_slices:
                raise ValueError(
                    f"{name} has {len(items)} entries but the layer has "
                    f"{self.num_slices} slices {self.out_features}"
                )
            for i, t in enumerate(items):
                if t is not None and not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name}[{i}] must be a Tensor or None, got {type(t).__name__}")
            return items
        raise TypeError(
            f"{name} must be a Tensor or a sequence of one Tensor per slice, "
            f"got {type(value).__name__}"
        )

    def _split_inputs(
        self, lora_a: object, lora_b: object
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        a_list = self._per_slice("lora_a", lora_a)
        b_list = self._per_slice("lora_b", lora_b)
        s = self.num_slices
        if len(a_list) == 1 and s > 1:
            a_list = a_list * s  # one A shared by every slice
        if len(b_list) == 1 and s > 1:
            b = b_list[0]
            if b.dim() != 2 or b.shape[0] != self.total_out:
                raise ValueError(
                    f"lora_b as one tensor for {s} slices must be [sum(out_features)="
                    f"{self.total_out}, r], got {list(b.shape)}"
                )
            b_list = list(torch.split(b, list(self.out_features), dim=0))
        return a_list, b_list

    def load(
        self,
        slot: int,
        lora_a: torch.Tensor | Sequence[torch.Tensor | None],
        lora_b: torch.Tensor | Sequence[torch.Tensor | None],
        scaling: float | Sequence[float] = 1.0,
    ) -> None:
        """Copy one adapter into ``slot`` (replacing what was there).

        Parameters
        ----------
        slot : int
            Slot id in ``[0, num_slots)``.
        lora_a : Tensor [r, in_features] or sequence (one per slice, ``None`` = slice not adapted)
            PEFT ``lora_A.weight`` layout. One tensor for a multi-slice layer is shared by
            every slice.
        lora_b : Tensor [out_i, r] or sequence (one per slice, ``None`` = slice not adapted)
            PEFT ``lora_B.weight`` layout. One tensor ``[sum(out_features), r]`` for a
            multi-slice layer is split by slice.
        scaling : float or sequence of float (one per slice)
            Multiplies the delta (PEFT ``lora_alpha / r``).

        Ranks may differ between slices; the slot's rank is their maximum and smaller
        slices are zero-padded. Nothing is written if any argument is invalid.
        """
        slot = self._check_slot(slot)
        a_list, b_list = self._split_inputs(lora_a, lora_b)
        s = self.num_slices
        if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
            scales = [float(scaling)] * s
        elif isinstance(scaling, Sequence) and len(scaling) == s:
            scales = [float(c) for c in scaling]
        else:
            raise TypeError(f"scaling must be a float or a sequence of {s} floats, got {scaling!r}")
        if not all(math.isfinite(c) for c in scales):
            raise ValueError(f"scaling must be finite, got {scales}")

        ranks = []
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            if (a is None) != (b is None):
                raise ValueError(f"slice {i}: lora_a and lora_b must both be given or both None")
            if a is None:
                ranks.append(0)
                continue
            for name, t in (("lora_a", a), ("lora_b", b)):
                if not t.is_floating_point():
                    raise TypeError(f"{name} for slice {i} must be floating point, got {t.dtype}")
                if t.dim() != 2:
                    raise ValueError(f"{name} for slice {i} must be 2-D, got {list(t.shape)}")
            r = a.shape[0]
            if a.shape[1] != self.in_features:
                raise ValueError(
                    f"lora_a for slice {i} must be [r, in_features={self.in_features}], "
                    f"got {list(a.shape)}"
                )
            if tuple(b.shape) != (self.out_features[i], r):
                raise ValueError(
                    f"lora_b for slice {i} must be [out_features={self.out_features[i]}, r={r}], "
                    f"got {list(b.shape)}"
                )
            if r < 1 or r > self.max_rank:
                raise ValueError(
                    f"rank of slice {i} is {r}, must be in [1, max_rank={self.max_rank}]"
                )
            ranks.append(r)
        rank = max(ranks)

        # Stage the whole slot, then one fixed-shape copy per tensor (on XLA, rank-dependent
        # slices of the device buffers would trace a new graph per rank).
        stage = torch.device("cpu") if self.device.type == "xla" else self.device
        a_new = torch.zeros(self.lora_a.shape[1:], dtype=self.dtype, device=stage)  # [S*R, K]
        b_new = torch.zeros(self.lora_b.shape[1:], dtype=self.dtype, device=stage)  # [N, R]
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            if a is None:
                continue
            r = a.shape[0]
            a_new[i * rank : i * rank + r].copy_(a)
            off = self.slice_offsets[i]
            b_new[off : off + self.out_features[i], :r].copy_(b)
        self.lora_a[slot].copy_(a_new)
        self.lora_b[slot].copy_(b_new)
        meta = torch.tensor([float(rank), *scales], dtype=torch.float32)
        self.ranks[slot].copy_(meta[0].to(torch.int32))
        self.scalings[slot].copy_(meta[1:])
        self.host_ranks[slot] = rank
        self.host_scalings[slot] = tuple(scales)
        self.version += 1

    def unload(self, slot: int) -> None:
        """Empty ``slot``: it contributes nothing until loaded again."""
        slot = self._check_slot(slot)
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.ranks[slot] = 0
        self.scalings[slot] = 0.0
        self.host_ranks[slot] = 0
        self.host_scalings[slot] = (0.0,) * self.num_slices
        self.version += 1

    def to(self, device: torch.device | str) -> LoRAWeights:
        """Move every slot to ``device`` in place (like ``nn.Module.to``); returns ``self``.

        Cached backend selections and kernel plans are dropped; batches built for the old
        device must be rebuilt (the ops reject a batch on another device).
        """
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev == self.device:
            return self
        for name in ("lora_a", "lora_b", "ranks", "scalings", "slice_bounds"):
            setattr(self, name, getattr(self, name).to(dev))
        self.device = dev
        for cached in ("_selection", "_triton_plans"):
            self.__dict__.pop(cached, None)
        self.version += 1
        return self

    def __repr__(self) -> str:
        loaded = sum(1 for r in self.host_ranks if r)
        return (
            f"LoRAWeights(num_slots={self.num_slots}, in_features={self.in_features}, "
            f"out_features={self.out_features}, max_rank={self.max_rank}, dtype={self.dtype}, "
            f"device={self.device}, loaded={loaded})"
        )
