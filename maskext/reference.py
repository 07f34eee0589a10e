"""Plain-PyTorch references of every maskext op: the truth for tests and
benchmarks. Written the obvious way (arange comparisons, masked_fill,
softmax), independent of the kernels' shared row-bounds code."""
from typing import Optional, Sequence

import torch
from torch import Tensor


def lengths_to_mask(lengths: Tensor, max_len: Optional[int] = None, *, left_pad: bool = False,
                    dtype: torch.dtype = torch.bool) -> Tensor:
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    pos = torch.arange(max_len, device=lengths.device)
    lengths = lengths.to(torch.int64)[:, None]
    keep = pos >= max_len - lengths if left_pad else pos < lengths
    return keep.to(dtype)


def lengths_to_padding_mask(lengths: Tensor, max_len: Optional[int] = None, *,
                            left_pad: bool = False) -> Tensor:
    return ~lengths_to_mask(lengths, max_len, left_pad=left_pad)


def mask_to_lengths(mask: Tensor) -> Tensor:
    return mask.sum(-1, dtype=torch.int64)


def lengths_from_padded(x: Tensor, pad_value, dim: int = 1) -> Tensor:
    x = x.movedim(dim, 1)
    if x.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    real = (x != pad_value).flatten(2).any(-1) if x.dim() > 2 else x != pad_value  # (B, T)
    steps = torch.arange(1, x.shape[1] + 1, device=x.device)
    return (real * steps).amax(-1)


def _batch_tensor(v, device):
    """An int or (B,) tensor as an int64 tensor broadcastable to (B, 1, Tq, Tk)."""
    if isinstance(v, Tensor):
        return v.to(device=device, dtype=torch.int64)[:, None, None, None]
    return torch.tensor(int(v), device=device).view(1, 1, 1, 1)


def visible(q_len: int, k_len: int, lengths: Optional[Tensor] = None,
            q_lengths: Optional[Tensor] = None, causal: bool = False,
            window: Optional[Sequence[Optional[int]]] = None,
            device=None, *, q_offset=None, segment_ids: Optional[Tensor] = None,
            chunk: Optional[int] = None, prefix_lengths=None) -> Tensor:
    """``(B, 1, q_len, k_len)`` bool: which keys each query sees (B = 1 without
    any per-batch tensor)."""
    for t in (lengths, q_lengths, q_offset, segment_ids, prefix_lengths):
        if isinstance(t, Tensor):
            device = t.device
            break
    i = torch.arange(q_len, device=device).view(1, 1, q_len, 1)
    j = torch.arange(k_len, device=device).view(1, 1, 1, k_len)
    # query i sits at key position p; default: bottom-right alignment
    p = i + _batch_tensor(k_len - q_len if q_offset is None else q_offset, device)
    local = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        local = local & (j <= p)
    if window is not None:
        # Sides past |p| + q_len + k_len reach beyond the row: clamped, so that p +
        # right cannot wrap around in int64 (window=(None, sys.maxsize)).
        big = q_len + k_len + (int(p.abs().max()) if p.numel() else 0)
        left, right = (None if w is None else min(w, big) for w in window)
        if left is not None:
            local = local & (j >= p - left)
        if right is not None:
            local = local & (j <= p + right)
    if chunk is not None:
        local = local & (torch.div(j, chunk, rounding_mode="floor")
                         == torch.div(p, chunk, rounding_mode="floor"))
    if prefix_lengths is not None:
        local = local | (j < _batch_tensor(prefix_lengths, device))
    keep = local
    if segment_ids is not None:
        seg = segment_ids.to(torch.int64)[:, None, None, :]  # (B, 1, 1, Tk)
        inside = (p >= 0) & (p < k_len)
        pc = p.clamp(0, max(k_len - 1, 0)).expand(seg.shape[0], 1, q_len, 1)
        own = seg.expand(-1, 1, q_len, -1).gather(3, pc) if k_len else pc
        keep = keep & inside & (seg == own)
    if lengths is not None:
        keep = keep & (j < lengths.to(torch.int64)[:, None, None, None])
    if q_lengths is not None:
        keep = keep & (i < q_lengths.to(torch.int64)[:, None, None, None])
    # B from any per-batch tensor, also one that did not enter keep (a (0,)
    # q_offset without causal or window).
    B = next((t.shape[0] for t in (lengths, q_lengths, q_offset, segment_ids, prefix_lengths)
              if isinstance(t, Tensor)), 1)
    return keep.expand(B, 1, q_len, k_len)


def attention_mask(lengths: Optional[Tensor] = None, *, q_len: int, k_len: int,
                   q_lengths: Optional[Tensor] = None, causal: bool = False,
                   window: Optional[Sequence[Optional[int]]] = None,
                   q_offset=None, segment_ids: Optional[Tensor] = None,
                   chunk: Optional[int] = None, prefix_lengths=None,
                   dtype: torch.dtype = torch.bool, device=None) -> Tensor:
    keep = visible(q_len, k_len, lengths, q_lengths, causal, window, device, q_offset=q_offset,
                   segment_ids=segment_ids, chunk=chunk, prefix_lengths=prefix_lengths)
    if dtype == torch.bool:
        return keep
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def masked_softmax(x: Tensor, mask: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                   q_lengths: Optional[Tensor] = None, causal: bool = False,
                   window: Optional[Sequence[Optional[int]]] = None,
                   scale: Optional[float] = None, bias: Optional[Tensor] = None,
                   compute_dtype: torch.dtype = torch.float64, softcap: Optional[float] = None,
                   sinks: Optional[Tensor] = None, **kinds) -> Tensor:
    """Computed in ``compute_dtype`` (float64 by default), returned in x's dtype.
    ``kinds``: ``q_offset``, ``segment_ids``, ``chunk``, ``prefix_lengths``, as
    :func:`visible`. ``softcap``: the score is ``softcap * tanh(scale * x /
    softcap)``, then ``bias`` is added. ``sinks``: gpt-oss's way, one more
    logit per row concatenated to the scores, its probability dropped.

    NaN: a NaN (or +inf) visible score makes every visible output of its row
    NaN, as ``torch.softmax``; masked positions stay 0 whatever they hold."""
    z, keep = _masked_scores(x, mask, lengths, q_lengths, causal, window, scale, bias,
                             compute_dtype, kinds, softcap)
    return torch.where(keep, _with_sinks(torch.softmax, z, sinks), 0.0).to(x.dtype)


def _with_sinks(fn, z: Tensor, sinks: Optional[Tensor]) -> Tensor:
    """fn (softmax or log_softmax) over the last dim of z with one sink logit
    appended to each row, the sink's own output dropped."""
    if sinks is None:
        return fn(z, -1)
    s = sinks.to(z.dtype).expand(z.shape[:-1]).unsqueeze(-1)
    return fn(torch.cat([z, s], -1), -1)[..., :-1]


def _masked_scores(x, mask, lengths, q_lengths, causal, window, scale, bias, compute_dtype,
                   kinds, softcap=None):
    """(scores with masked positions -inf, keep mask); fully masked rows are all
    0 scores (a softmax of them is then NaN-free, for autograd)."""
    z = x.to(compute_dtype) * (1.0 if scale is None else scale)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if x.dim() == 2:
        keep = visible(1, x.shape[-1], lengths, device=x.device)[:, 0, 0, :]
    else:
        keep = visible(x.shape[-2], x.shape[-1], lengths, q_lengths, causal, window, x.device,
                       **kinds)
        keep = keep.reshape(keep.shape[:1] + (1,) * (x.dim() - 3) + keep.shape[-2:])
    if mask is not None:
        keep = keep & mask
    if bias is not None:
        keep = keep & ~(bias <= torch.finfo(bias.dtype).min)  # a NaN bias is a NaN score
        z = z + bias.to(compute_dtype)
    keep = keep & (z != float("-inf"))  # -inf scores count as masked
    any_kept = keep.any(-1, keepdim=True)
    z = torch.where(any_kept, z.masked_fill(~keep, float("-inf")), 0.0)
    return z, keep.expand(z.shape)


def masked_log_softmax(x: Tensor, mask: Optional[Tensor] = None, *,
                       lengths: Optional[Tensor] = None, q_lengths: Optional[Tensor] = None,
                       causal: bool = False, window: Optional[Sequence[Optional[int]]] = None,
                       scale: Optional[float] = None, bias: Optional[Tensor] = None,
                       compute_dtype: torch.dtype = torch.float64,
                       softcap: Optional[float] = None, sinks: Optional[Tensor] = None,
                       **kinds) -> Tensor:
    """Masked positions and fully masked rows: ``finfo(x.dtype).min``, and so is
    a visible log-probability below it. NaN as in :func:`masked_softmax`."""
    z, keep = _masked_scores(x, mask, lengths, q_lengths, causal, window, scale, bias,
                             compute_dtype, kinds, softcap)
    lowest = torch.finfo(x.dtype).min
    logp = _with_sinks(torch.log_softmax, z, sinks)
    return torch.where(keep, logp.clamp(min=lowest), lowest).to(x.dtype)


def _steps_mask(x: Tensor, lengths: Tensor, dim: int, left_pad: bool = False) -> Tensor:
    """bool, broadcastable to x: True at the real steps along dim."""
    dim = dim % x.dim()
    keep = lengths_to_mask(lengths, x.shape[dim], left_pad=left_pad)  # (B, T)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    return keep.view(shape)


def fill_padding(x: Tensor, lengths: Tensor, value=0.0, *, dim: int = 1,
                 left_pad: bool = False) -> Tensor:
    return x.masked_fill(~_steps_mask(x, lengths, dim, left_pad), value)


def masked_sum(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    return fill_padding(x, lengths, 0, dim=dim).sum(dim, keepdim=keepdim)


def masked_mean(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    n = lengths.clamp(0, x.shape[dim]).clamp(min=1).to(x.dtype)
    n = n.view([-1] + [1] * (x.dim() - (1 if keepdim else 2)))
    return masked_sum(x, lengths, dim=dim, keepdim=keepdim) / n


def masked_max(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    if x.shape[dim] == 0:  # amax refuses an empty dim; no steps means empty sequences: 0
        return x.sum(dim, keepdim=keepdim) * 0
    keep = _steps_mask(x, lengths, dim)
    out = x.masked_fill(~keep, float("-inf")).amax(dim, keepdim=keepdim)
    empty = ~keep.any(dim, keepdim=keepdim)
    return out.masked_fill(empty, 0)


def soft_mask(logits: Tensor, lengths: Optional[Tensor] = None, *, temperature: float = 1.0,
              hard: bool = False) -> Tensor:
    m = torch.sigmoid(logits / temperature)
    if hard:
        m = (logits >= 0).to(m.dtype)
    return m if lengths is None else fill_padding(m, lengths, 0, dim=1)


def sigmoid_gate(x: Tensor, logits: Tensor, lengths: Optional[Tensor] = None, *,
                 temperature: float = 1.0, hard: bool = False) -> Tensor:
    return x * soft_mask(logits, lengths, temperature=temperature, hard=hard)
