"""PyTorch reference backend: any device, float32 accumulation, the CPU production path.

Two formulations:

- *grouped* (eager, host knows the batch's segments): one GEMM pair per used slot over that
  slot's tokens and its real rank; compute is proportional to the tokens with an adapter
  and to each slot's rank.
- *masked* (no host information, e.g. inside ``torch.compile``; a static batch, which exists
  to be refilled between CUDA-graph replays; or any call while a CUDA stream is capturing):
  a loop over every slot with masks built on the device, never reading device data on the
  host, so a captured graph stays right when the batch is refilled or adapters are reloaded.

Backend interface (shared by every backend): ``shrink(x, w, batch) -> y``,
``expand(y, w, batch, base_out)``, ``add_lora(base_out, x, w, batch)``, where ``w`` is a
:class:`~lora_dispatch.weights.LoRAWeights` (or a view with the same tensor attributes and
``host_ranks=None``) and ``batch`` a :class:`~lora_dispatch.batch.LoRABatch` (or a view with
``host_segments=None``).
"""

from __future__ import annotations

import torch

__all__ = ["shrink", "expand", "add_lora"]


def _grouped(x: torch.Tensor, w, batch) -> bool:
    """Whether the host-known segments and ranks may drive this call (see module docstring)."""
    if batch.host_segments is None or w.host_ranks is None or batch.is_static:
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def _segments(w, batch):
    """Yield ``(slot, rank, token_ids)`` for each used, loaded slot (host-known path).

    The ops have checked that the batch routes no token past ``T``.
    """
    ranks = w.host_ranks
    for slot, start, end in batch.host_segments:
        if slot >= w.num_slots:
            continue
        r = ranks[slot]
        if r == 0:
            continue
        yield slot, r, batch.sorted_tokens[start:end]  # [n]


def _grouped_shrink_slot(x: torch.Tensor, w, slot: int, r: int, idx: torch.Tensor) -> torch.Tensor:
    s = w.num_slices
    xs = x.index_select(0, idx).float()  # [n, K]
    a = w.lora_a[slot, : s * r].float()  # [S*r, K]
    y = (xs @ a.T).view(-1, s, r)  # [n, S, r]
    return y * w.scalings[slot].view(1, s, 1)


def _grouped_expand_slot(
    y: torch.Tensor, w, slot: int, r: int, idx: torch.Tensor, base_out: torch.Tensor
) -> None:
    parts = [
        y[:, i] @ w.lora_b[slot, off : off + width, :r].float().T  # [n, out_i]
        for i, (off, width) in enumerate(zip(w.slice_offsets, w.out_features))
    ]
    delta = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # [n, N]
    if base_out.dtype == torch.float32:
        base_out.index_add_(0, idx, delta)
    else:
        rows = base_out.index_select(0, idx).float() + delta
        base_out.index_copy_(0, idx.long(), rows.to(base_out.dtype))


def _masked_shrink(x: torch.Tensor, w, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """y ``[S, T, R]`` and the per-token slot ``[T]`` without host reads."""
    t = x.shape[0]
    s, rmax = w.num_slices, w.max_rank
    slots = batch.token_slots[:t].to(torch.int64)  # [T]
    k = torch.arange(rmax, device=x.device)  # [R]
    xf = x.float()
    y = torch.zeros(s, t, rmax, dtype=torch.float32, device=x.device)
    for slot in range(w.num_slots):
        r = w.ranks[slot].to(torch.int64)
        cols = (torch.arange(s, device=x.device)[:, None] * r + k[None, :]).clamp(max=s * rmax - 1)
        keep = (k[None, :] < r).float()  # [1, R]
        full = xf @ w.lora_a[slot].float().T  # [T, S*R]
        ys = full[:, cols].permute(1, 0, 2) * keep * w.scalings[slot].view(s, 1, 1)  # [S, T, R]
        y += torch.where((slots == slot).view(1, t, 1), ys, 0.0)
    return y, slots


def _masked_expand(y: torch.Tensor, w, slots: torch.Tensor, base_out: torch.Tensor) -> None:
    t = base_out.shape[0]
    delta = torch.zeros(t, w.total_out, dtype=torch.float32, device=base_out.device)
    for slot in range(w.num_slots):
        mask = (slots == slot).view(t, 1)
        for i, (off, width) in enumerate(zip(w.slice_offsets, w.out_features)):
            b = w.lora_b[slot, off : off + width].float()  # [out_i, R]
            delta[:, off : off + width] += torch.where(mask, y[i] @ b.T, 0.0)
    touched = ((slots >= 0) & (slots < w.num_slots)).view(t, 1)
    has_rank = torch.zeros(t, 1, dtype=torch.bool, device=base_out.device)
    for slot in range(w.num_slots):
        has_rank |= (slots == slot).view(t, 1) & (w.ranks[slot] > 0)
    new = (base_out.float() + delta).to(base_out.dtype)
    base_out.copy_(torch.where(touched & has_rank, new, base_out))


def shrink(x: torch.Tensor, w, batch) -> torch.Tensor:
    """``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T`` for ``s = slot(t)``; zeros elsewhere.

    Parameters
    ----------
    x : Tensor [T, K]

    Returns
    -------
    Tensor [num_slices, T, max_rank] float32
    """
    t = x.shape[0]
    if not _grouped(x, w, batch):
        return _masked_shrink(x, w, batch)[0]
    y = torch.zeros(w.num_slices, t, w.max_rank, dtype=torch.float32, device=x.device)
    for slot, r, idx in _segments(w, batch):
        ys = _grouped_shrink_slot(x, w, slot, r, idx)  # [n, S, r]
        y[:, idx, :r] = ys.permute(1, 0, 2)
    return y


def expand(y: torch.Tensor, w, batch, base_out: torch.Tensor) -> None:
    """``base_out[t, off_i:off_i+out_i] += y[i, t, :r] @ B_i[s, :, :r]^T`` for ``s = slot(t)``.

    Parameters
    ----------
    y : Tensor [num_slices, T, max_rank]
    base_out : Tensor [T, sum(out_features)], updated in place
    """
    t = base_out.shape[0]
    if not _grouped(y, w, batch):
        _masked_expand(y.float(), w, batch.token_slots[:t].to(torch.int64), base_out)
        return
    for slot, r, idx in _segments(w, batch):
        ys = y[:, idx, :r].float().permute(1, 0, 2)  # [n, S, r]
        _grouped_expand_slot(ys, w, slot, r, idx, base_out)


def add_lora(base_out: torch.Tensor, x: torch.Tensor, w, batch) -> None:
    """``base_out += expand(shrink(x))`` without materializing the full ``y``."""
    if not _grouped(x, w, batch):
        y, slots = _masked_shrink(x, w, batch)
        _masked_expand(y, w, slots, base_out)
        return
    for slot, r, idx in _segments(w, batch):
        ys = _grouped_shrink_slot(x, w, slot, r, idx)
        _grouped_expand_slot(ys, w, slot, r, idx, base_out)
