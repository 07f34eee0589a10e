"""Hugging Face transformers attention backend that never builds the 4-D mask.

    import maskext.hf
    maskext.hf.register()                       # returns "maskext"
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="maskext")
    # or: model.set_attn_implementation("maskext")

transformers is an optional dependency (``pip install maskext[hf]``): ``import
maskext`` never imports it, this module does.

Two functions are registered under one name:

* the **mask function** (``transformers.masking_utils.AttentionMaskInterface``)
  is what ``create_causal_mask`` and its siblings call, once per layer type per
  forward, instead of building a ``(B, 1, Tq, Tk)`` mask. It reads the mask
  function HF hands it (a tree of HF's own building blocks: causal,
  bidirectional, sliding window, chunked, packed sequences) and the 2-D
  ``attention_mask``, and returns a :class:`maskext.MaskSpec`: a few ints and
  ``(B,)`` / ``(B, Tk)`` tensors.

  ============================  =========================================================
  HF pattern                    MaskSpec
  ============================  =========================================================
  causal / bidirectional        ``causal=True`` / nothing
  sliding window (causal)       ``window=(sliding_window - 1, 0)``
  sliding window (bidirect.)    ``window=(sliding_window, sliding_window)``
  chunked attention             ``segment_ids`` = chunk number of each key (HF counts
                                chunks from each row's first real token)
  packed sequences              ``segment_ids`` = document of each key (HF detects them
                                from ``position_ids`` restarts)
  right padding                 ``lengths`` = end of the real keys
  left padding                  ``segment_ids``: padding keys 0, real keys 1 (for
                                bidirectional attention without a window, where the
                                keys' start does not depend on the query: a
                                ``(B, 1, 1, Tk)`` bool mask, as for holes)
  KV cache (dynamic, static,    ``q_offset`` = HF's q_offset - kv_offset (int, or a
  sliding-window caches)        ``(B,)`` tensor when the static cache gives a tensor)
  ============================  =========================================================

  Reading the 2-D mask's shape (one run per row? left padding?) takes one
  host sync per forward; ``register(name, host_sync=False)`` registers a mask
  function that never syncs and passes the padding as a ``(B, 1, 1, Tk)`` bool
  mask next to ``lengths`` instead.

  Two fall-backs, both correct:

  * a 2-D ``attention_mask`` with holes (a row that is not one run of ones) is
    kept as a ``(B, 1, 1, Tk)`` bool mask, broadcast over heads and queries and
    read by strides: :class:`MaskWithKeep` holds it next to the MaskSpec;
  * a mask function that is not built only from the blocks above (an
    ``or_mask_function``, ``and_mask_function`` of a model's own, block-wise
    overlays of multimodal models) is materialised with HF's own ``sdpa_mask``
    as a ``(B, 1, Tq, Tk)`` bool mask, also in a :class:`MaskWithKeep`.

* the **attention function** (``transformers.AttentionInterface``) is a drop-in
  for HF's ``eager_attention_forward``: ``scores = q @ k^T`` then one
  :func:`maskext.masked_softmax` (``scale``, ``softcap``, ``sinks``, the mask
  description) and ``probs @ v``. It returns ``(attn_output, attn_weights)`` as
  eager does: weights in the query dtype, the softmax accumulated in fp32.
  Grouped-query attention runs without ``repeat_kv``: the query heads that
  share a key/value head are folded into the query rows of one matmul.

Rows of padding *queries* (never read by real tokens) differ from eager's:
eager gives a fully masked row a uniform distribution over all keys, maskext
gives zeros (right padding: the same row as eager; left padding: the row over
the padding keys). Real tokens' outputs are the same.
"""
import dataclasses
import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import MaskSpec, masked_softmax

try:
    import transformers
    from transformers import masking_utils as _mu
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("maskext.hf needs Hugging Face transformers >= 5: pip install 'maskext[hf]' "
                      f"(import failed: {e})") from e

__all__ = ["MaskWithKeep", "attention_forward", "mask_function", "register"]

# Names that belong to transformers' own backends: register() refuses them
# rather than replacing, for every model in the process, an implementation the
# user did not ask to replace.
_BUILTIN_NAMES = frozenset(("eager", "sdpa", "flash_attention_2", "flash_attention_3",
                            "flash_attention_4", "flex_attention", "paged_attention"))


# Generation with a static (compileable) cache builds the masks in advance and
# hands them to the model as its ``attention_mask``; the model hands them back
# to create_causal_mask, which passes a 4-D mask through but calls
# ``attention_mask.ndim`` on anything else and treats ``ndim == 2`` as a padding
# mask. So what mask_function returns says ``ndim == 4`` (it stands for HF's
# (B, 1, Tq, Tk) mask), and mask_function returns such an object as it is.
_HF_NDIM = 4


@dataclasses.dataclass(frozen=True, eq=False)
class _HFMaskSpec(MaskSpec):
    """A :class:`maskext.MaskSpec` (no field added: passed as ``spec=`` it is
    exactly one) that HF's mask plumbing recognises as a prepared mask."""

    ndim = _HF_NDIM  # a class attribute, not a dataclass field


@dataclasses.dataclass(frozen=True, eq=False)
class MaskWithKeep:
    """A mask that is not only intervals: ``spec`` (the interval part, may be
    empty) AND ``keep``, a bool tensor broadcastable to ``(B, 1, Tq, Tk)``,
    True = visible: ``(B, 1, 1, Tk)`` for a 2-D padding mask with holes,
    ``(B, 1, Tq, Tk)`` for a pattern materialised with HF's ``sdpa_mask``."""

    spec: MaskSpec
    keep: Tensor
    ndim = _HF_NDIM


# ---------------------------------------------------------------- reading HF's mask functions

class _Unrecognised(Exception):
    """A mask function that is not built only from HF's interval building blocks."""


def _code(name, *args):
    """The code object of the closures that HF's factory ``name`` returns, or
    None where this transformers has no such factory (e.g. the packed-sequence
    position remapping arrived after 5.17)."""
    factory = getattr(_mu, name, None)
    return None if factory is None else factory(*args).__code__


# HF's building blocks are closures; a closure is recognised by its code object
# (one per factory), its parameters are read from its cells.
_DUMMY = torch.zeros(1, dtype=torch.long)
_AND_CODE = _code("and_masks", _mu.causal_mask_function)
_SLIDING_CODE = _code("sliding_window_overlay", 1)
_SLIDING_BIDIR_CODE = _code("sliding_window_bidirectional_overlay", 1)
_CHUNKED_CODE = _code("chunked_overlay", 1, _DUMMY)
_PACKED_CODE = _code("packed_sequence_mask_function", _DUMMY)
_REMAP_CODE = _code("remap_positions_for_packed_sequence", _mu.causal_mask_function, _DUMMY)


def _cells(fn) -> dict:
    return {name: cell.cell_contents
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ())}


@dataclasses.dataclass
class _Pattern:
    """What a mask function says, in key-index terms: the query at key position
    p sees keys j with p - left <= j <= p + right (None: unbounded), in the same
    chunk and in the same packed document."""

    left: Optional[int] = None
    right: Optional[int] = None
    chunk: Optional[int] = None
    chunk_left_padding: Optional[Tensor] = None
    packed_ids: Optional[Tensor] = None  # (B, Tk) document of each key
    positions: Optional[Tensor] = None   # (B, Tk) HF's remapped positions (packed)

    def query_independent(self) -> bool:
        """True when every query sees the same keys (bidirectional, no window)."""
        return (self.left is None and self.right is None and self.chunk is None
                and self.packed_ids is None)

    def bound(self, left=None, right=None):
        if left is not None:
            self.left = left if self.left is None else min(self.left, left)
        if right is not None:
            self.right = right if self.right is None else min(self.right, right)


def _parse(fn, pattern: _Pattern, remapped: bool = False) -> None:
    """Adds what ``fn`` says to ``pattern``; raises _Unrecognised otherwise."""
    if fn is _mu.causal_mask_function:
        pattern.bound(right=0)
    elif fn is _mu.bidirectional_mask_function:
        pass
    elif not hasattr(fn, "__code__"):
        raise _Unrecognised(fn)
    elif fn.__code__ is _AND_CODE:
        for inner in _cells(fn)["mask_functions"]:
            _parse(inner, pattern, remapped)
    elif fn.__code__ is _SLIDING_CODE:
        # kv_idx > q_idx - sliding_window: the query and the sliding_window - 1 keys before it
        pattern.bound(left=int(_cells(fn)["sliding_window"]) - 1)
    elif fn.__code__ is _SLIDING_BIDIR_CODE:
        w = int(_cells(fn)["sliding_window"])  # |q_idx - kv_idx| <= sliding_window
        pattern.bound(left=w, right=w)
    elif fn.__code__ is _CHUNKED_CODE:
        c = _cells(fn)
        if pattern.chunk is not None:
            raise _Unrecognised(fn)  # two chunk sizes: not seen in HF, not handled
        pattern.chunk, pattern.chunk_left_padding = int(c["chunk_size"]), c["left_padding"]
    elif fn.__code__ is _PACKED_CODE and not remapped:
        pattern.packed_ids = _cells(fn)["packed_sequence_mask"]
    elif fn.__code__ is _REMAP_CODE and not remapped:
        # q_idx, kv_idx replaced by position_ids: inside one packed document the
        # positions are the indices plus a constant (that is how HF finds the
        # documents), so causal and windows read the same in indices; chunks
        # count from the positions, handled in _segments.
        c = _cells(fn)
        pattern.positions = c["position_ids"]
        _parse(c["mask_function"], pattern, remapped=True)
    else:
        raise _Unrecognised(fn)


# ---------------------------------------------------------------- the mask function

# The 2-D padding mask is the same tensor for every layer type of one forward:
# its analysis (one host sync) is kept for the last tensor seen.
_padding_cache: dict = {}


def _key_window(attention_mask: Tensor, kv_length: int, kv_offset: int) -> Tensor:
    """The 2-D mask's keys [kv_offset, kv_offset + kv_length) as (B, Tk) bool."""
    pm = attention_mask
    if pm.dtype != torch.bool:
        pm = pm != 0
    short = kv_offset + kv_length - pm.shape[-1]
    if short > 0:  # HF pads a short mask (static cache) with "padding"
        pm = F.pad(pm, (0, short), value=False)
    return pm[:, kv_offset:kv_offset + kv_length]


def _padding(attention_mask: Optional[Tensor], kv_length: int, kv_offset: int):
    """The real keys of each row as one run [start, end) of the window
    [kv_offset, kv_offset + kv_length) of the 2-D mask: (start, end, has_left,
    keep) with (B,) int64 tensors and (B, Tk) bool keep, or None when every
    key is real; or keep alone when a row has holes."""
    if attention_mask is None:
        return None
    key = (kv_length, kv_offset, attention_mask._version)
    if _padding_cache.get("mask") is attention_mask and _padding_cache.get("key") == key:
        return _padding_cache["value"]
    pm = _key_window(attention_mask, kv_length, kv_offset)
    Tk = pm.shape[-1]
    ar = torch.arange(Tk, device=pm.device)
    n = pm.sum(-1)
    start = torch.where(n > 0, pm.int().argmax(-1), 0)
    end = start + n
    run = (ar >= start[:, None]) & (ar < end[:, None])
    flags = torch.stack([(pm == run).all(), (n == Tk).all(), (start > 0).any()]).tolist()  # sync
    one_run, all_real, has_left = flags
    if not one_run:
        value = pm
    elif all_real:
        value = None
    else:
        value = (start, end, has_left, pm)
    _padding_cache.update(mask=attention_mask, key=key, value=value)
    return value


def _padding_no_sync(attention_mask: Optional[Tensor], kv_length: int, kv_offset: int):
    """_padding without reading the mask on the host: (end, keep), the end of
    each row's last real key ((B,) int64, 0 for a row without one) and the
    (B, Tk) bool keep, or None without a mask. What the rows look like (one
    run, left padding, none) is not known here, so the keep always goes with
    the spec (the mask/bias kernels; the backward reads no mask)."""
    if attention_mask is None:
        return None
    pm = _key_window(attention_mask, kv_length, kv_offset)
    Tk = pm.shape[-1]
    # 1 + the index of the last True, 0 for none: the largest of (j + 1) * keep[j]
    end = (pm * torch.arange(1, Tk + 1, device=pm.device)).amax(-1) if Tk > 0 else \
        torch.zeros(pm.shape[0], dtype=torch.long, device=pm.device)
    return end, pm


def _runs(*ids: Tensor) -> Tensor:
    """(B, Tk) int64, non-decreasing: a new number wherever any of ``ids``
    changes along the keys, so two keys share a number iff they share every id
    and no other id lies between them."""
    change = None
    for t in ids:
        d = t[:, 1:] != t[:, :-1]
        change = d if change is None else change | d
    return F.pad(change.long().cumsum(-1), (1, 0))


def mask_function(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                  mask_function: Callable = _mu.causal_mask_function,
                  attention_mask: Optional[Tensor] = None, device=None, *,
                  host_sync: bool = True, **kwargs) -> Union[MaskSpec, MaskWithKeep]:
    """The ``AttentionMaskInterface`` function: HF's mask request as a
    :class:`maskext.MaskSpec` (or :class:`MaskWithKeep` for what intervals
    cannot say). Arguments as HF's ``sdpa_mask``; ``q_offset`` / ``kv_offset``
    are the absolute positions of the first query / key. ``host_sync``
    (``register``'s): read the 2-D padding mask's shape on the host (one sync
    per forward) to describe it by intervals; False: no sync, the padding mask
    goes with the spec as a ``(B, 1, 1, Tk)`` bool mask (``lengths`` = the end
    of the real keys)."""
    if isinstance(attention_mask, (MaskSpec, MaskWithKeep)):
        return attention_mask  # prepared in advance for this step (static-cache generation)
    device = torch.device(device) if device is not None else (
        attention_mask.device if attention_mask is not None else torch.device("cpu"))
    pattern = _Pattern()
    try:
        _parse(mask_function, pattern)
        if pattern.positions is not None and pattern.packed_ids is None:
            # remapped positions are index-like only inside HF's packed documents
            raise _Unrecognised(mask_function)
    except _Unrecognised:
        # Not intervals (or not HF's blocks): HF's own boolean mask, correct by construction.
        keep = _mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                             q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                             attention_mask=attention_mask, allow_is_causal_skip=False,
                             allow_is_bidirectional_skip=False,
                             use_vmap=kwargs.get("use_vmap", False), device=device)
        return MaskWithKeep(_HFMaskSpec(), keep)

    B, Tk = batch_size, kv_length
    # query i sits at absolute position q_offset + i, key j at kv_offset + j: in key
    # indices (maskext's q_offset) the query is at q_offset - kv_offset + i.
    if isinstance(q_offset, Tensor):
        qo = (q_offset.to(device=device, dtype=torch.int64) - kv_offset).reshape(-1)
        qo = qo.expand(B).contiguous()
    else:
        qo = int(q_offset) - kv_offset
        if qo == Tk - q_length:
            qo = None  # maskext's default (bottom-right)

    spec = dict(q_offset=qo)
    if pattern.right == 0:
        spec["causal"] = True
        if pattern.left is not None:
            spec["window"] = (pattern.left, 0)
    elif pattern.left is not None or pattern.right is not None:
        spec["window"] = (pattern.left, pattern.right)

    keep = None
    ids = []
    if host_sync:
        pad = _padding(attention_mask, kv_length, kv_offset)
    else:  # the padding as a keep mask next to lengths, never read on the host
        pad = None
        end_keep = _padding_no_sync(attention_mask, kv_length, kv_offset)
        if end_keep is not None:
            spec["lengths"], keep = end_keep[0], end_keep[1][:, None, None, :]
    if isinstance(pad, Tensor):
        keep = pad[:, None, None, :]  # holes: (B, 1, 1, Tk), broadcast, read by strides
    elif pad is not None:
        start, end, has_left, run = pad
        spec["lengths"] = end
        if has_left and pattern.query_independent():
            # Left padding where every query sees every real key (encoders, cross
            # attention): the start of the keys does not depend on the query, which no
            # interval field says (segments would tie a query to the key at its own
            # index, meaningless for cross attention), so the (B, 1, 1, Tk) mask.
            keep = run[:, None, None, :]
        elif has_left:
            # Self attention: a real query sits on a real key, and segment ids (padding
            # 0, real 1) keep it to the real keys.
            ids.append((torch.arange(Tk, device=device) >= start[:, None]).long())
    if pattern.packed_ids is not None:
        ids.append(pattern.packed_ids.to(device).expand(B, Tk))
    if pattern.chunk is not None:
        # HF: (kv - left_padding[b]) // chunk == (q - left_padding[b]) // chunk, on the
        # remapped positions for packed sequences (then q_length == kv_length, no cache).
        if pattern.positions is not None:
            pos = pattern.positions.to(device).expand(B, Tk)
        else:
            pos = torch.arange(kv_offset, kv_offset + Tk, device=device).expand(B, Tk)
        lp = pattern.chunk_left_padding.to(device).reshape(-1, 1)
        ids.append(torch.div(pos - lp, pattern.chunk, rounding_mode="floor"))
    if ids:
        spec["segment_ids"] = _runs(*ids) if len(ids) > 1 else ids[0].contiguous()
    out = _HFMaskSpec(**spec)
    return out if keep is None else MaskWithKeep(out, keep)


# ---------------------------------------------------------------- the attention function

def _heads_view(t: Tensor, B: int, Hkv: int, G: int) -> Tensor:
    """A (B or 1, 1 or H, Tq, Tk) mask or bias as (B or 1, 1 or Hkv, 1 or G, Tq, Tk),
    to broadcast against the grouped scores; a view, never a copy."""
    if t.dim() != 4:
        raise ValueError("maskext.hf.attention_forward: attention_mask must be 4-D "
                         f"(B, 1 or H, Tq, Tk) when it is a tensor, got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        return t.unsqueeze(1)
    if t.shape[1] != Hkv * G:
        raise ValueError("maskext.hf.attention_forward: attention_mask dim 1 must be 1 or the "
                         f"number of query heads {Hkv * G}, got shape {tuple(t.shape)}")
    return t.unflatten(1, (Hkv, G))


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask, scaling: Optional[float] = None, dropout: float = 0.0,
                      softcap: Optional[float] = None, s_aux: Optional[Tensor] = None,
                      sliding_window: Optional[int] = None, is_causal: Optional[bool] = None,
                      **kwargs):
    """The ``AttentionInterface`` function, a drop-in for HF's eager attention.

    ``query`` ``(B, H, Tq, D)``, ``key`` / ``value`` ``(B, Hkv, Tk, D)`` with H a
    multiple of Hkv. ``attention_mask``: what :func:`mask_function` returned
    (MaskSpec or MaskWithKeep), a 4-D tensor (a user's custom mask, which HF
    passes through: bool keep, or additive float as eager adds), or None (no
    mask description came: as HF's sdpa, causal when ``is_causal`` / the
    module's ``is_causal`` says so and Tq > 1, and ``sliding_window`` applies).
    ``scaling`` (default ``head_dim ** -0.5``), ``softcap`` (Gemma 2), ``s_aux``
    (per-head sink logits, gpt-oss), ``dropout`` (in training, on the weights,
    as eager). Returns ``((B, Tq, H, D) output, (B, H, Tq, Tk) weights)``."""
    B, H, Tq, D = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    if H % Hkv != 0:
        raise ValueError(f"maskext.hf.attention_forward: query heads ({H}) must be a multiple of "
                         f"key/value heads ({Hkv})")
    G = H // Hkv
    if scaling is None:
        scaling = getattr(module, "head_dim", D) ** -0.5

    spec, keep, bias = None, None, None
    if isinstance(attention_mask, MaskSpec):
        spec = attention_mask
    elif isinstance(attention_mask, MaskWithKeep):
        spec, keep = attention_mask.spec, _heads_view(attention_mask.keep, B, Hkv, G)
    elif isinstance(attention_mask, Tensor):
        m = _heads_view(attention_mask, B, Hkv, G)
        if m.dtype == torch.bool:
            keep = m
        else:
            bias = m.to(query.dtype)
    elif attention_mask is None:
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", False)) \
            and Tq > 1
        window = None
        if sliding_window is not None:  # HF: the query and sliding_window - 1 keys before it
            window = (sliding_window - 1, 0) if causal else (sliding_window, sliding_window)
        spec = MaskSpec(causal=causal, window=window)
    else:
        raise TypeError("maskext.hf.attention_forward: attention_mask must be a maskext.MaskSpec, "
                        "maskext.hf.MaskWithKeep, a 4-D tensor or None, got "
                        f"{type(attention_mask).__name__}")

    # GQA without repeat_kv: the G query heads of a key/value head become G * Tq
    # rows of one matmul against that head's keys; the scores are then viewed as
    # (B, Hkv, G, Tq, Tk), so the mask sees Tq query rows.
    q = query.reshape(B, Hkv, G * Tq, D)
    scores = torch.matmul(q, key.transpose(-1, -2)).view(B, Hkv, G, Tq, Tk)
    sinks = None if s_aux is None else s_aux.reshape(1, Hkv, G, 1)  # one logit per query head
    probs = masked_softmax(scores, keep, spec=spec, scale=scaling, bias=bias, softcap=softcap,
                           sinks=sinks)
    if dropout and module.training:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs.view(B, Hkv, G * Tq, Tk), value)
    out = out.view(B, H, Tq, value.shape[-1]).transpose(1, 2).contiguous()
    return out, probs.view(B, H, Tq, Tk)


# ---------------------------------------------------------------- registration

def register(name: str = "maskext", *, host_sync: bool = True) -> str:
    """Registers :func:`attention_forward` with ``transformers.AttentionInterface``
    and :func:`mask_function` with ``transformers.masking_utils.AttentionMaskInterface``
    under ``name``, for ``from_pretrained(..., attn_implementation=name)`` and
    ``model.set_attn_implementation(name)``. Idempotent; returns ``name``.

    ``host_sync=False``: the mask function never reads the 2-D padding mask on
    the host (with True, one sync per forward, which waits for the GPU's queue,
    as HF's own sdpa mask does); the padding then goes to the softmax as a bool
    mask (its mask path) whatever the rows look like, which is slower per
    softmax but lets the host run ahead of the GPU."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"maskext.hf.register: name must be a non-empty str, got {name!r}")
    if name in _BUILTIN_NAMES:
        raise ValueError(f"maskext.hf.register: name must not be one of transformers' own "
                         f"backends {sorted(_BUILTIN_NAMES)}, got {name!r}")
    if not isinstance(host_sync, bool):
        raise TypeError(f"maskext.hf.register: host_sync must be a bool, got {host_sync!r}")
    transformers.AttentionInterface.register(name, attention_forward)
    _mu.AttentionMaskInterface.register(
        name, mask_function if host_sync else functools.partial(mask_function, host_sync=False))
    return name
