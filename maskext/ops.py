"""Typed public functions over ``torch.ops.maskext``, their fake (meta)
implementations for ``torch.compile``, and autograd.

Mask semantics, stated once (the kernels share one C++ definition of them,
csrc/include/maskext/row_bounds.h):

* ``lengths[b]``: keys ``0 <= j < lengths[b]`` are real (right padding), or the
  last ``lengths[b]`` keys with ``left_pad=True``. A length above the padded
  size means "all real", as ``arange(T) < lengths[:, None]`` gives.
* ``q_lengths[b]``: query rows ``i >= q_lengths[b]`` are fully masked.
* ``causal`` and ``window`` are aligned to the bottom-right corner of the padded
  ``(Tq, Tk)`` block: query ``i`` sits at key position ``p = i + Tk - Tq``
  (flash-attn >= 2.1, ``torch.nn.attention.bias.causal_lower_right``). With
  ``Tq == Tk`` causal means query ``i`` sees keys ``j <= i``; with ``Tq == 1``
  (decoding) the query sees every real key.
* ``window=(left, right)``: query at position ``p`` sees keys
  ``p - left <= j <= p + right`` (flash-attn's ``window_size``); ``None`` for
  one side means unbounded on that side. ``(0, 0)`` sees only itself.
* ``q_offset`` (int or ``(B,)`` integer tensor): query ``i`` sits at key
  position ``p = q_offset + i`` instead (static KV caches, chunked prefill);
  the default is ``Tk - Tq``. ``causal`` and ``window`` are relative to ``p``.
* ``segment_ids`` ``(B, Tk)`` integer tensor, non-decreasing along the keys
  (packed documents): the query at ``p`` sees only keys ``j`` with
  ``segment_ids[b, j] == segment_ids[b, p]``; a query whose ``p`` lies outside
  ``[0, Tk)`` sees nothing. Non-decreasing ids are checked on the CPU only.
* ``chunk`` (int > 0, chunked attention): keys with ``j // chunk == p // chunk``.
* ``prefix_lengths`` (int or ``(B,)`` tensor, prefix-LM): keys
  ``j < prefix_lengths[b]`` are visible to every query whatever ``causal``,
  ``window`` and ``chunk`` say (they still obey everything else). A prefix
  with a left-bounded window or with a chunk could leave two visible
  intervals: that combination is an error.
* All of these combine by intersection (AND) with each other and with a
  boolean ``mask`` (True = keep).

On CUDA, negative lengths are not looked for where that would cost a host
sync (they are treated as 0); on the CPU, and wherever ``max_len`` is left
out, they are an error.
"""
import dataclasses
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C

_ops = torch.ops.maskext
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_BelowAutograd = torch._C._AutoDispatchBelowAutograd


def cuda_built() -> bool:
    """True when this build of maskext contains the CUDA kernels."""
    return bool(_C.cuda_built())


def build_info() -> dict:
    """What this build of maskext was compiled with: ``cuda`` (bool), ``cuda_archs``
    (comma-separated, empty without CUDA), ``cpu_capability`` (``"AVX2"`` or
    ``"default"``), ``parallel_backend`` of the CPU kernels (``"OpenMP"``,
    ``"native"``, or ``"none"``: single-threaded), ``openmp`` (the ``_OPENMP``
    date, 0 without) and ``torch`` (the version of the headers it was built
    against)."""
    return dict(_C.build_info())


# ---------------------------------------------------------------- argument helpers

def _tensor_arg(op: str, name: str, value, optional: bool = True) -> Optional[Tensor]:
    if value is None and optional:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"maskext.{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _window_args(op: str, window: Optional[Sequence[Optional[int]]]) -> Tuple[int, int]:
    """(left, right) with -1 for unbounded, as the kernels take it."""
    if window is None:
        return -1, -1
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"maskext.{op}: window must be a (left, right) pair, got {window!r}")
    out = []
    for side, v in zip(("left", "right"), window):
        if v is None:
            out.append(-1)
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(
                f"maskext.{op}: window {side} must be an int >= 0 or None (unbounded), got {v!r}")
        else:
            out.append(int(v))
    return out[0], out[1]


def _int_arg(op: str, name: str, value, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, torch.SymInt):  # a size under torch.compile: kept symbolic
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"maskext.{op}: {name} must be an int >= 0, got {value!r}")
    return int(value)


def _int_or_tensor(op: str, name: str, value, minimum: Optional[int]):
    """(tensor, None) for a tensor, (None, int) for an int, (None, None) for None."""
    if value is None or isinstance(value, Tensor):
        return value, None
    if isinstance(value, torch.SymInt):
        return None, value
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        what = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"maskext.{op}: {name} must be {what} or a (B,) integer tensor, "
                         f"got {value!r}")
    return None, int(value)


def _chunk_arg(op: str, chunk) -> int:
    if chunk is None:
        return 0
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"maskext.{op}: chunk must be an int > 0 or None, got {chunk!r}")
    return int(chunk)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskSpec:
    """The one Python home of a mask description: which keys each query row
    sees (one interval per row, DESIGN.md §1). Built once per batch, passed as
    ``spec=`` to :func:`masked_softmax`, :func:`masked_log_softmax`,
    :func:`attention_mask` and ``nn.MaskedSoftmax``; the fields mean what the
    keywords of the same names mean (see this module's docstring), and every op
    turns it into its schema arguments in one place (``_mask_args``).

    Immutable; ``spec.replace(causal=False)`` gives a changed copy. Tensor
    fields are not copied. The fields are checked when it is built."""

    lengths: Optional[Tensor] = None
    q_lengths: Optional[Tensor] = None
    causal: bool = False
    window: Optional[Tuple[Optional[int], Optional[int]]] = None
    q_offset: Union[int, Tensor, None] = None
    segment_ids: Optional[Tensor] = None
    chunk: Optional[int] = None
    prefix_lengths: Union[int, Tensor, None] = None

    def __post_init__(self):
        if self.window is not None and isinstance(self.window, list):
            object.__setattr__(self, "window", tuple(self.window))
        if not isinstance(self.causal, bool):
            raise ValueError(f"maskext.MaskSpec: causal must be a bool, got {self.causal!r}")
        _mask_args("MaskSpec", None, *self._fields())  # raises on a bad field

    def _fields(self):
        return (self.lengths, self.q_lengths, self.causal, self.window, self.q_offset,
                self.segment_ids, self.chunk, self.prefix_lengths)

    def replace(self, **changes) -> "MaskSpec":
        return dataclasses.replace(self, **changes)


_MASK_KEYWORDS = ("lengths", "q_lengths", "causal", "window", "q_offset", "segment_ids", "chunk",
                  "prefix_lengths")


def _mask_args(op, spec, lengths=None, q_lengths=None, causal=False, window=None, q_offset=None,
               segment_ids=None, chunk=None, prefix_lengths=None):
    """The one Python place that turns a mask description (a MaskSpec, or the
    keywords) into the schemas' arguments: (lengths, q_lengths, causal,
    window_left, window_right) and (q_offset, q_offset_value, segment_ids, chunk,
    prefix_lengths, prefix_value), the two runs of the schema's mask arguments
    (``scale`` sits between them in the softmax ops)."""
    if spec is not None:
        if not isinstance(spec, MaskSpec):
            raise TypeError(f"maskext.{op}: spec must be a maskext.MaskSpec, got "
                            f"{type(spec).__name__}")
        given = [name for name, v in zip(_MASK_KEYWORDS, (lengths, q_lengths, causal, window,
                                                          q_offset, segment_ids, chunk,
                                                          prefix_lengths))
                 if v is not None and v is not False]
        if given:
            raise ValueError(f"maskext.{op}: give the mask description as spec= or as keywords, "
                             f"not both (got spec and {', '.join(given)})")
        lengths, q_lengths, causal, window, q_offset, segment_ids, chunk, prefix_lengths = \
            spec._fields()
    wl, wr = _window_args(op, window)
    qo, qo_value = _int_or_tensor(op, "q_offset", q_offset, None)
    pl, pl_value = _int_or_tensor(op, "prefix_lengths", prefix_lengths, 0)
    head = (_tensor_arg(op, "lengths", lengths), _tensor_arg(op, "q_lengths", q_lengths),
            bool(causal), wl, wr)
    tail = (qo, qo_value, _tensor_arg(op, "segment_ids", segment_ids), _chunk_arg(op, chunk),
            pl, 0 if pl_value is None else pl_value)
    return head, tail


# The unboxed entry point of each op that has one (csrc/maskext.cpp): the same
# dispatcher call below autograd, without boxing the arguments.
# It takes every argument of the schema, positionally: other calls go through
# torch.ops.
_UNBOXED = {_ops.masked_softmax: (_C.masked_softmax, 17),
            _ops.masked_log_softmax: (_C.masked_log_softmax, 17),
            _ops.masked_softmax_backward: (_C.masked_softmax_backward, 14),
            _ops.masked_log_softmax_backward: (_C.masked_log_softmax_backward, 14),
            _ops.gate: (_C.gate, 5),
            _ops.masked_pool: (_C.masked_pool, 4)}
_has_torch_function = torch._C._has_torch_function
# The eager autograd path of each op in _UNBOXED (filled by _register_autograd
# below): a torch.autograd.Function in front of the unboxed entry point, with
# the same setup_context and backward that register_autograd gets. The wrapper
# that register_autograd puts in front of the op cost ~200 us of host time per
# call of a 17-argument softmax (torch._library's fill_defaults is quadratic in
# the schema's arguments): a Hugging Face training step on an H200 was 15 %
# slower than eager for it (benchmarks/RESULTS.md, 2026-11-26). torch.compile,
# functorch transforms and __torch_function__ arguments keep that wrapper.
_EAGER_AUTOGRAD = {}
_functorch_level = torch._C._functorch.maybe_current_level


def _call(op, differentiable, *args):
    """``op(*args)``. When a gradient can flow, through _EAGER_AUTOGRAD where
    the op has an unboxed entry point. When none can (grad mode off, or none of
    the ``differentiable`` tensors requires grad) the op is dispatched below the
    autograd layer: the same kernel, without the Python autograd wrapper that
    ``register_autograd`` puts in front of every call (about 5 us); and, when
    no argument has a ``__torch_function__`` (subclass or mode), through its
    unboxed entry point instead of ``torch.ops`` (whose boxing of 17 arguments
    took 9 of the 11 us of a small call). Dispatch modes, fake tensors,
    autocast and functorch still apply: both go through the dispatcher. Under
    ``torch.compile`` the op is traced as is."""
    if _is_compiling():
        return op(*args)
    fast = _UNBOXED.get(op)
    if _grad_enabled():
        for t in differentiable:  # a loop: any() over a generator costs ~0.5 us here
            if t is not None and t.requires_grad:
                if (fast is not None and len(args) == fast[1] and not _has_torch_function(args)
                        and _functorch_level() is None):
                    return _EAGER_AUTOGRAD[op](*args)
                return op(*args)
    if fast is not None and len(args) == fast[1] and not _has_torch_function(args):
        return fast[0](*args)
    with _BelowAutograd():
        return op(*args)


# ---------------------------------------------------------------- masks from lengths

def lengths_to_mask(lengths: Tensor, max_len: Optional[int] = None, *, left_pad: bool = False,
                    dtype: torch.dtype = torch.bool) -> Tensor:
    """``(B, max_len)`` mask, True (or 1) where a position is a real element.

    Equals ``arange(max_len) < lengths[:, None]`` (or the mirror image with
    ``left_pad=True``). ``max_len=None`` uses ``lengths.max()``: one host sync,
    and not traceable by ``torch.compile(fullgraph=True)``; pass it to avoid both.
    """
    lengths = _tensor_arg("lengths_to_mask", "lengths", lengths, optional=False)
    max_len = _int_arg("lengths_to_mask", "max_len", max_len, optional=True)
    return _ops.lengths_to_mask(lengths, max_len, left_pad, False, dtype)


def lengths_to_padding_mask(lengths: Tensor, max_len: Optional[int] = None, *,
                            left_pad: bool = False) -> Tensor:
    """``(B, max_len)`` bool mask, True where a position is PADDING.

    The drop-in for ``nn.MultiheadAttention(key_padding_mask=)``, fairseq's
    ``lengths_to_padding_mask`` and ESPnet's ``make_pad_mask``. ``max_len`` as
    in :func:`lengths_to_mask`.
    """
    lengths = _tensor_arg("lengths_to_padding_mask", "lengths", lengths, optional=False)
    max_len = _int_arg("lengths_to_padding_mask", "max_len", max_len, optional=True)
    return _ops.lengths_to_mask(lengths, max_len, left_pad, True, torch.bool)


def mask_to_lengths(mask: Tensor) -> Tensor:
    """int64 ``(B,)``: the number of True (kept) positions in each row of a
    ``(B, T)`` bool keep mask."""
    mask = _tensor_arg("mask_to_lengths", "mask", mask, optional=False)
    return _ops.mask_to_lengths(mask)


def lengths_from_padded(x: Tensor, pad_value, dim: int = 1) -> Tensor:
    """int64 ``(B,)`` lengths of right-padded data: 1 + the index along ``dim``
    of the last step holding any element != ``pad_value`` (0 if none).
    ``x`` is ``(B, T, ...)`` (time along ``dim``), of any dtype (token ids too)."""
    x = _tensor_arg("lengths_from_padded", "x", x, optional=False)
    return _ops.lengths_from_padded(x, pad_value, dim)


def attention_mask(lengths: Optional[Tensor] = None, *, q_len: int, k_len: int,
                   q_lengths: Optional[Tensor] = None, causal: bool = False,
                   window: Optional[Sequence[Optional[int]]] = None,
                   q_offset=None, segment_ids: Optional[Tensor] = None,
                   chunk: Optional[int] = None, prefix_lengths=None,
                   dtype: torch.dtype = torch.bool,
                   device: Optional[torch.device] = None,
                   spec: Optional[MaskSpec] = None) -> Tensor:
    """``(B, 1, q_len, k_len)`` attention mask, written in one kernel pass.

    bool: True = keep. A floating ``dtype`` gives an additive mask: 0 keep,
    ``torch.finfo(dtype).min`` masked (for ``F.scaled_dot_product_attention``
    and Hugging Face models). ``lengths`` (key padding), ``q_lengths`` (query
    padding), ``causal``, ``window``, ``q_offset``, ``segment_ids``, ``chunk``
    and ``prefix_lengths`` combine as described in this module's docstring,
    exactly as the softmax ops see them (or ``spec``, a :class:`MaskSpec`
    holding them, ``lengths`` included). B comes from the first tensor given
    (1 without any). The mask is built on that tensor's device, else on
    ``device`` (default CPU). No host sync.
    """
    op = "attention_mask"
    q_len = _int_arg(op, "q_len", q_len)
    k_len = _int_arg(op, "k_len", k_len)
    (lengths, q_lengths, causal, wl, wr), tail = _mask_args(
        op, spec, lengths, q_lengths, causal, window, q_offset, segment_ids, chunk, prefix_lengths)
    given = next((t for t in (lengths, q_lengths, tail[0], tail[2], tail[4]) if t is not None),
                 None)
    if given is not None and device is not None:
        dev = torch.device(device)  # "cuda" names the same device as cuda:0
        if dev.type != given.device.type or dev.index not in (None, given.device.index):
            raise ValueError(f"maskext.{op}: device {dev} differs from the lengths' device {given.device}")
    if lengths is None:
        B = given.shape[0] if given is not None else 1
        dev = given.device if given is not None else (device if device is not None else "cpu")
        lengths = torch.full((B,), k_len, dtype=torch.int64, device=dev)
    return _ops.attention_mask(lengths, q_lengths, q_len, k_len, causal, wl, wr, dtype, *tail)


# ---------------------------------------------------------------- masked softmax

def _softcap_arg(op: str, softcap) -> float:
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap > 0 \
            or not math.isfinite(softcap):
        raise ValueError(f"maskext.{op}: softcap must be a finite float > 0 or None, got {softcap!r}")
    return float(softcap)


# The schema's arguments after scale for the common call: no q_offset,
# segment_ids, chunk or prefix (_mask_args' tail), softcap 0, no sinks.
_COMMON_TAIL = (None, None, None, 0, None, 0, 0.0, None)


def _softmax_args(op, x, mask, lengths, q_lengths, causal, window, scale, bias, q_offset,
                  segment_ids, chunk, prefix_lengths, spec, softcap, sinks):
    """The public arguments, checked, in the op schema's order."""
    if (spec is None and window is None and q_offset is None and segment_ids is None
            and chunk is None and prefix_lengths is None and softcap is None and sinks is None
            and type(causal) is bool):
        # The common call (lengths, q_lengths, causal): the same checks and
        # result as below in half the time (1.9 -> 0.9 us here; a (2, 2, 64, 64)
        # softmax takes ~25 us in all).
        return (_tensor_arg(op, "x", x, optional=False), _tensor_arg(op, "mask", mask),
                _tensor_arg(op, "bias", bias), _tensor_arg(op, "lengths", lengths),
                _tensor_arg(op, "q_lengths", q_lengths), causal, -1, -1,
                1.0 if scale is None else float(scale)) + _COMMON_TAIL
    head, tail = _mask_args(op, spec, lengths, q_lengths, causal, window, q_offset, segment_ids,
                            chunk, prefix_lengths)
    return (_tensor_arg(op, "x", x, optional=False), _tensor_arg(op, "mask", mask),
            _tensor_arg(op, "bias", bias), *head, 1.0 if scale is None else float(scale), *tail,
            _softcap_arg(op, softcap), _tensor_arg(op, "sinks", sinks))


def masked_softmax(x: Tensor, mask: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                   q_lengths: Optional[Tensor] = None, causal: bool = False,
                   window: Optional[Sequence[Optional[int]]] = None, scale: Optional[float] = None,
                   bias: Optional[Tensor] = None, q_offset=None,
                   segment_ids: Optional[Tensor] = None, chunk: Optional[int] = None,
                   prefix_lengths=None, spec: Optional[MaskSpec] = None,
                   softcap: Optional[float] = None, sinks: Optional[Tensor] = None) -> Tensor:
    """Softmax over the last dim of ``scale * x + bias`` restricted to the visible keys.

    The fused replacement for ``(scale * x + bias).masked_fill(~mask, -inf).softmax(-1)``
    that never builds the mask and never reads masked scores.

    * ``x``: ``(B, Tk)`` or ``(B, ..., Tq, Tk)``, float16/bfloat16/float32/float64,
      any strides. Output: same shape and dtype, contiguous.
    * ``lengths`` / ``q_lengths`` ``(B,)``, ``causal``, ``window``, ``q_offset``,
      ``segment_ids``, ``chunk``, ``prefix_lengths``: see the module docstring
      (all but ``lengths`` need ``x`` with a query dim). ``spec``: a
      :class:`MaskSpec` holding these instead (not both).
    * ``softcap`` (float > 0, Gemma 2): the score is ``softcap * tanh(scale * x /
      softcap)`` before ``bias`` is added, in the same pass; gradient included.
    * ``sinks`` (attention sinks, gpt-oss): float tensor broadcastable to
      ``x.shape[:-1]`` (one per head: ``(H, 1)``), one extra logit per row that
      joins the normaliser and is dropped from the output: ``p_j = exp(z_j) /
      (exp(sink) + sum of exp(z_k) over the visible k)``, so a row sums to less
      than 1. Not scaled, capped or biased. A fully masked row is still all 0.
      Gets a gradient (summed over broadcast dims) when it requires one.
    * ``mask``: bool, broadcastable to ``x``, True = keep; read with broadcast
      strides, never expanded in memory.
    * ``bias``: x's dtype, broadcastable to ``x``, added after ``scale``;
      ``-inf`` and ``finfo.min`` entries count as masked. Gets a gradient
      (summed over broadcast dims) when it requires one.
    * Fully masked rows are exactly 0 and get gradient 0; masking never makes NaN.
    Accumulation is in fp32 (fp64 for fp64 inputs).
    """
    args = _softmax_args("masked_softmax", x, mask, lengths, q_lengths, causal, window, scale, bias,
                         q_offset, segment_ids, chunk, prefix_lengths, spec, softcap, sinks)
    return _call(_ops.masked_softmax, (x, bias, sinks), *args)


def masked_log_softmax(x: Tensor, mask: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                       q_lengths: Optional[Tensor] = None, causal: bool = False,
                       window: Optional[Sequence[Optional[int]]] = None,
                       scale: Optional[float] = None, bias: Optional[Tensor] = None,
                       q_offset=None, segment_ids: Optional[Tensor] = None,
                       chunk: Optional[int] = None, prefix_lengths=None,
                       spec: Optional[MaskSpec] = None, softcap: Optional[float] = None,
                       sinks: Optional[Tensor] = None) -> Tensor:
    """``log_softmax`` over the visible keys; the arguments are those of :func:`masked_softmax`.

    Visible positions equal ``log_softmax`` over the visible ones. Masked
    positions, and every position of a fully masked row, are
    ``torch.finfo(x.dtype).min``: finite (``0 * logp`` stays 0 in a loss, no
    NaN), and ``exp`` of them is exactly 0, as :func:`masked_softmax` gives.
    Their gradient is 0. (A visible log-probability below ``finfo.min`` is
    clamped to it and then counts as masked.)
    """
    args = _softmax_args("masked_log_softmax", x, mask, lengths, q_lengths, causal, window, scale,
                         bias, q_offset, segment_ids, chunk, prefix_lengths, spec, softcap, sinks)
    return _call(_ops.masked_log_softmax, (x, bias, sinks), *args)


# The schema's mask arguments after scale, with their defaults (a direct call of
# a torch.ops.maskext op may leave them out).
_MASK_TAIL_DEFAULTS = (None, None, None, 0, None, 0)


def _register_autograd(name, backward, setup_context):
    """register_autograd for maskext::name, and its eager path (_EAGER_AUTOGRAD)
    when the op has an unboxed entry point."""
    torch.library.register_autograd(f"maskext::{name}", backward, setup_context=setup_context)
    op = getattr(_ops, name)
    if op in _UNBOXED:
        fn = _UNBOXED[op][0]

        # forward(ctx, *inputs) calling setup_context itself: a Function with a
        # setup_context staticmethod binds its arguments with inspect.signature
        # on every apply (~40 us a call on a 2-core EPYC: as much as the rest of
        # a small softmax's forward and backward host time together).
        def forward(ctx, *inputs):
            output = fn(*inputs)
            setup_context(ctx, inputs, output)
            return output

        function = type(f"_{name}_autograd", (torch.autograd.Function,),
                        {"forward": staticmethod(forward), "backward": staticmethod(backward)})
        _EAGER_AUTOGRAD[op] = function.apply


class _Rows:
    """The row description of a softmax op's call, split into the tensors (saved
    for backward) and the plain values: ``args(scale)`` gives the backward ops'
    arguments after (grad_out, out)."""

    def __init__(self, head, tail):
        self.lengths, self.q_lengths, self.causal, self.wl, self.wr = head
        self.q_offset, self.q_offset_value, self.segment_ids, self.chunk, self.prefix, \
            self.prefix_value = tuple(tail) + _MASK_TAIL_DEFAULTS[len(tail):]

    def tensors(self):
        return (self.lengths, self.q_lengths, self.q_offset, self.segment_ids, self.prefix)

    def set_tensors(self, ts):
        self.lengths, self.q_lengths, self.q_offset, self.segment_ids, self.prefix = ts

    def args(self, scale):
        return (self.lengths, self.q_lengths, self.causal, self.wl, self.wr, scale, self.q_offset,
                self.q_offset_value, self.segment_ids, self.chunk, self.prefix, self.prefix_value)

    def trivial(self):
        return (all(t is None for t in self.tensors()) and not self.causal and self.wl < 0
                and self.wr < 0 and self.q_offset_value is None and self.chunk == 0
                and self.prefix_value == 0)


def _save_rows(ctx, rows, *extra):
    ctx.save_for_backward(*extra, *rows.tensors())
    rows.set_tensors((None,) * 5)  # the saved ones come back from ctx.saved_tensors
    ctx.rows = rows


def _saved_rows(ctx, n_extra):
    saved = ctx.saved_tensors
    rows = ctx.rows
    rows.set_tensors(saved[n_extra:])
    return saved[:n_extra], rows


def _softmax_setup_context(ctx, inputs, output):
    x, mask, bias, lengths, q_lengths, causal, wl, wr, scale = inputs[:9]
    softcap = inputs[15] if len(inputs) > 15 else 0.0
    sinks = inputs[16] if len(inputs) > 16 else None
    # x is needed only for the softcap's derivative
    _save_rows(ctx, _Rows((lengths, q_lengths, causal, wl, wr), inputs[9:15]), output,
               x if softcap > 0 else None)
    ctx.scale, ctx.softcap = scale, softcap
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.sinks_meta = None if sinks is None else (sinks.shape, sinks.dtype)
    ctx.n_inputs = len(inputs)


def _softmax_backward_for(backward_op):
    """Autograd of masked_softmax / masked_log_softmax: the backward op needs only
    the saved output and the row description."""
    def backward(ctx, grad):
        (y, x), rows = _saved_rows(ctx, 2)
        scale, softcap = ctx.scale, ctx.softcap
        need_x, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_sinks = ctx.sinks_meta is not None and ctx.needs_input_grad[16]
        dx = dbias = dsinks = None
        if not (softcap > 0 or need_bias or need_sinks):
            if need_x:  # the common case: scale folded into the one fused pass
                dx = _call(backward_op, (grad, y), grad, y, *rows.args(scale))
            return (dx,) + (None,) * (ctx.n_inputs - 1)
        # dz = d(loss)/d(score) once, score = softcap(scale * x) + bias.
        dz = _call(backward_op, (grad, y), grad, y, *rows.args(1.0))
        if need_bias:
            dbias = dz.sum_to_size(ctx.bias_shape)
        if need_sinks:
            # Adding one constant to every visible score and to the sink changes
            # nothing, so d(sink) = -(the row's sum of dz): no pass over y.
            shape, dtype = ctx.sinks_meta
            dsinks = dz.sum(-1, dtype=_acc_dtype(dz.dtype)).neg().sum_to_size(shape).to(dtype)
        if need_x and softcap > 0:
            # dscore/dx = scale * (1 - tanh^2). dz is 0 outside the visible keys,
            # where x may hold anything (inf, NaN).
            acc = _acc_dtype(x.dtype)
            t = torch.tanh(x.to(acc) * (scale / softcap))
            dza = dz.to(acc)
            dx = torch.where(dza == 0, 0.0, dza * (scale * (1 - t * t))).to(x.dtype)
        elif need_x:
            dx = dz * scale
        grads = [dx, None, dbias] + [None] * (ctx.n_inputs - 3)
        if ctx.sinks_meta is not None:
            grads[16] = dsinks
        return tuple(grads)
    return backward


_register_autograd("masked_softmax", _softmax_backward_for(_ops.masked_softmax_backward),
                   setup_context=_softmax_setup_context)
_register_autograd("masked_log_softmax", _softmax_backward_for(_ops.masked_log_softmax_backward),
                   setup_context=_softmax_setup_context)


# Double backward: autograd of the backward ops, so that Hessian-vector
# products, gradient penalties and meta-gradients are right (without it the
# second-order terms were silently 0). The gradient with respect to the
# backward's grad_out is the backward op itself (fused); the gradient with
# respect to the saved output needs two row sums, done with plain torch ops in
# fp32 (fp64 for fp64). Both are restricted to the visible interval, as the
# kernels are: they never read grad_out or out outside it.

def _visible_like(y: Tensor, rows: "_Rows") -> Optional[Tensor]:
    """bool, broadcastable to y (B, Tk) or (B, ..., Tq, Tk): the keys the
    kernels' row bounds leave visible (every kind of the description, through
    attention_mask: the same row_bounds()); None when every key is."""
    if rows.trivial():
        return None
    B, Tk = y.shape[0], y.shape[-1]
    Tq = y.shape[-2] if y.dim() > 2 else 1
    lengths = rows.lengths
    if lengths is None:
        lengths = torch.full((B,), Tk, dtype=torch.int64, device=y.device)
    a = rows.args(1.0)
    vis = _ops.attention_mask(lengths, rows.q_lengths, Tq, Tk, rows.causal, rows.wl, rows.wr,
                              torch.bool, *a[6:])
    if y.dim() == 2:
        return vis.view(B, Tk)
    return vis.view((B,) + (1,) * (y.dim() - 3) + (Tq, Tk))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _softmax_bwd_setup_context(ctx, inputs, output):
    grad_out, out, lengths, q_lengths, causal, wl, wr, scale = inputs[:8]
    _save_rows(ctx, _Rows((lengths, q_lengths, causal, wl, wr), inputs[8:]), grad_out, out)
    ctx.scale = scale
    ctx.n_inputs = len(inputs)


def _softmax_double_backward(ctx, v):
    """dx = s * y * (g - D), D = sum_vis(y * g), on the visible interval:
    d/dg = s * y * (v - sum_vis(y * v))  (the backward op applied to v),
    d/dy = s * (v * (g - D) - g * E),  E = sum_vis(y * v)."""
    (g, y), rows = _saved_rows(ctx, 2)
    scale = ctx.scale
    dg = dy = None
    if ctx.needs_input_grad[0]:
        dg = _ops.masked_softmax_backward(v, y, *rows.args(scale))
    if ctx.needs_input_grad[1]:
        vis = _visible_like(y, rows)
        acc = _acc_dtype(y.dtype)
        ya, ga, va = y.to(acc), g.to(acc), v.to(acc)
        if vis is not None:
            ya, ga, va = (torch.where(vis, t, 0) for t in (ya, ga, va))
        D = (ya * ga).sum(-1, keepdim=True)
        E = (ya * va).sum(-1, keepdim=True)
        dy = (scale * (va * (ga - D) - ga * E)).to(y.dtype)
    return (dg, dy) + (None,) * (ctx.n_inputs - 2)


def _log_softmax_double_backward(ctx, v):
    """dx = s * (g - exp(y) * G), G = sum_A(g), on A = visible and y != finfo.min:
    d/dg = s * (v - sum_A(v * exp(y))) on A,   d/dy = -s * v * exp(y) * G on A."""
    (g, y), rows = _saved_rows(ctx, 2)
    scale = ctx.scale
    vis = _visible_like(y, rows)
    active = y != torch.finfo(y.dtype).min
    if vis is not None:
        active = active & vis
    acc = _acc_dtype(y.dtype)
    zero = torch.zeros((), dtype=acc, device=y.device)
    p = torch.where(active, y.to(acc).exp(), zero)
    va = torch.where(active, v.to(acc), zero)
    dg = dy = None
    if ctx.needs_input_grad[0]:
        F = (va * p).sum(-1, keepdim=True)
        dg = torch.where(active, scale * (va - F), zero).to(y.dtype)
    if ctx.needs_input_grad[1]:
        G = torch.where(active, g.to(acc), zero).sum(-1, keepdim=True)
        dy = (-scale * va * p * G).to(y.dtype)
    return (dg, dy) + (None,) * (ctx.n_inputs - 2)


_register_autograd("masked_softmax_backward", _softmax_double_backward,
                   setup_context=_softmax_bwd_setup_context)
_register_autograd("masked_log_softmax_backward", _log_softmax_double_backward,
                   setup_context=_softmax_bwd_setup_context)


# ---------------------------------------------------------------- padded data

def fill_padding(x: Tensor, lengths: Tensor, value=0.0, *, dim: int = 1,
                 left_pad: bool = False) -> Tensor:
    """``x`` with the padding steps along ``dim`` set to ``value`` (a new,
    contiguous tensor): ``x.masked_fill(pad_mask[..., None], value)`` without
    building the mask. ``x`` is ``(B, ..., T, ...)`` with T at ``dim``; any dtype.
    Gradient: passed through at real steps, 0 at padding."""
    x = _tensor_arg("fill_padding", "x", x, optional=False)
    lengths = _tensor_arg("fill_padding", "lengths", lengths, optional=False)
    return _call(_ops.fill_padding, (x,), x, lengths, value, dim, left_pad)


def fill_padding_(x: Tensor, lengths: Tensor, value=0.0, *, dim: int = 1,
                  left_pad: bool = False) -> Tensor:
    """In-place :func:`fill_padding`: writes only the padding (the real steps are
    not read). Returns ``x``. Under autograd (``x`` requires grad) it is done as
    an out-of-place fill and a copy, so gradients stay right."""
    x = _tensor_arg("fill_padding_", "x", x, optional=False)
    lengths = _tensor_arg("fill_padding_", "lengths", lengths, optional=False)
    if x.requires_grad and torch.is_grad_enabled():
        return x.copy_(_ops.fill_padding(x, lengths, value, dim, left_pad))
    _ops.fill_padding_(x, lengths, value, dim, left_pad)
    return x


def _fill_padding_setup_context(ctx, inputs, output):
    x, lengths, value, dim, left_pad = inputs
    ctx.save_for_backward(lengths)
    ctx.spec = (dim, left_pad)


def _fill_padding_backward(ctx, grad):
    (lengths,) = ctx.saved_tensors
    dim, left_pad = ctx.spec
    return _ops.fill_padding(grad, lengths, 0, dim, left_pad), None, None, None, None


_register_autograd("fill_padding", _fill_padding_backward,
                   setup_context=_fill_padding_setup_context)


def _fill_padding_inplace_autograd(x, lengths, value, dim, left_pad):
    """Autograd kernel of the in-place op (register_autograd refuses mutating
    ops): without one, torch.ops.maskext.fill_padding_ on a tensor that needs a
    gradient passed the gradient of the padding through, silently. Under
    autograd it is an out-of-place fill and a copy, as fill_padding_() does."""
    if torch.is_grad_enabled() and x.requires_grad:
        x.copy_(_ops.fill_padding(x, lengths, value, dim, left_pad))
        return
    with torch._C._AutoDispatchBelowAutograd():
        _ops.fill_padding_(x, lengths, value, dim, left_pad)
    # As every in-place op: a tensor saved for a backward and then filled here
    # makes that backward raise instead of using the changed values.
    torch.autograd.graph.increment_version(x)


_lib = torch.library.Library("maskext", "IMPL")  # noqa: TOR901 (kept alive by the module)
_lib.impl("fill_padding_", _fill_padding_inplace_autograd, "Autograd")

_POOL_MODES = {"sum": 0, "mean": 1, "max": 2}


def _pool(name: str, x: Tensor, lengths: Tensor, dim: int, keepdim: bool) -> Tensor:
    x = _tensor_arg(f"masked_{name}", "x", x, optional=False)
    lengths = _tensor_arg(f"masked_{name}", "lengths", lengths, optional=False)
    values = _call(_ops.masked_pool, (x,), x, lengths, dim, _POOL_MODES[name])  # checks dim
    d = dim % x.dim()
    values = values.reshape(x.shape[:d] + x.shape[d + 1:])
    return values.unsqueeze(d) if keepdim else values


def masked_sum(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    """Sum over the real steps along ``dim`` (the first ``lengths[b]``); 0 for an
    empty sequence. Gradients reach only the real steps."""
    return _pool("sum", x, lengths, dim, keepdim)


def masked_mean(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    """Mean over the real steps along ``dim``; 0 for an empty sequence (never NaN)."""
    return _pool("mean", x, lengths, dim, keepdim)


def masked_max(x: Tensor, lengths: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    """Max over the real steps along ``dim``; 0 for an empty sequence (not -inf).
    NaN propagates. The gradient goes to the first maximal real step (none for
    an empty sequence)."""
    return _pool("max", x, lengths, dim, keepdim)


def _pool_setup_context(ctx, inputs, output):
    x, lengths, dim, mode = inputs
    # max needs x to find where its maximum was; sum and mean only the lengths.
    ctx.save_for_backward(lengths, x if mode == _POOL_MODES["max"] else None, output)
    ctx.spec = (x.shape, dim % x.dim(), mode)


def _pool_backward(ctx, grad):
    lengths, x, values = ctx.saved_tensors
    shape, d, mode = ctx.spec
    B, T = shape[0], shape[d]
    M, I = math.prod(shape[1:d]), math.prod(shape[d + 1:])
    if mode == _POOL_MODES["max"]:
        keep = _ops.lengths_to_mask(lengths, T, False, False, torch.bool).view(B, 1, T, 1)
        hit = (x.reshape(B, M, T, I) == values.unsqueeze(2)) & keep
        first = hit & (hit.cumsum(2) == 1)  # the first maximal step only
        return (grad.unsqueeze(2) * first).reshape(shape), None, None, None
    if mode == _POOL_MODES["mean"]:
        n = lengths.clamp(0, T).clamp(min=1).to(grad.dtype)
        grad = grad / n.view(B, 1, 1)
    dx = grad.unsqueeze(2).expand(B, M, T, I).reshape(shape)
    return _ops.fill_padding(dx, lengths, 0, d, False), None, None, None


_register_autograd("masked_pool", _pool_backward, setup_context=_pool_setup_context)


# ---------------------------------------------------------------- soft masks

def _inv_temperature(op: str, temperature: float) -> float:
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"maskext.{op}: temperature must be > 0, got {temperature!r}")
    return 1.0 / t


def soft_mask(logits: Tensor, lengths: Optional[Tensor] = None, *, temperature: float = 1.0,
              hard: bool = False) -> Tensor:
    """``sigmoid(logits / temperature)``, in (0, 1), exactly 0 at steps at or past
    ``lengths`` along dim 1 of ``logits`` ``(B, T, ...)``. ``hard=True``: 0/1
    (threshold 0.5) in the forward, the sigmoid's gradient in the backward
    (straight-through)."""
    logits = _tensor_arg("soft_mask", "logits", logits, optional=False)
    lengths = _tensor_arg("soft_mask", "lengths", lengths)
    inv_t = _inv_temperature("soft_mask", temperature)
    return _call(_ops.gate, (logits,), None, logits, lengths, inv_t, bool(hard))


def sigmoid_gate(x: Tensor, logits: Tensor, lengths: Optional[Tensor] = None, *,
                 temperature: float = 1.0, hard: bool = False) -> Tensor:
    """``x * soft_mask(logits, lengths, ...)`` in one kernel (sigmoid, multiply
    and padding zeroing fused); ``x`` and ``logits`` have the same shape."""
    x = _tensor_arg("sigmoid_gate", "x", x, optional=False)
    logits = _tensor_arg("sigmoid_gate", "logits", logits, optional=False)
    lengths = _tensor_arg("sigmoid_gate", "lengths", lengths)
    inv_t = _inv_temperature("sigmoid_gate", temperature)
    return _call(_ops.gate, (x, logits), x, logits, lengths, inv_t, bool(hard))


def _gate_setup_context(ctx, inputs, output):
    x, logits, lengths, inv_t, hard = inputs
    ctx.save_for_backward(x, logits, lengths)
    ctx.spec = (inv_t, hard)


def _gate_backward(ctx, grad):
    x, logits, lengths = ctx.saved_tensors
    inv_t, hard = ctx.spec
    dx, dlogits = _ops.gate_backward(grad, x, logits, lengths, inv_t, hard)
    return (dx if x is not None else None), dlogits, None, None, None


_register_autograd("gate", _gate_backward, setup_context=_gate_setup_context)


def _gate_bwd_setup_context(ctx, inputs, output):
    grad, x, logits, lengths, inv_t, hard = inputs
    ctx.save_for_backward(grad, x, logits, lengths)
    ctx.spec = (inv_t, hard)


def _gate_double_backward(ctx, u, t):
    """gate_backward gives, at real steps (0 at padding), with s = sigmoid(w * z),
    w = inv_t, m = (z >= 0 if hard else s) and X = x (or 1 without x):
        dx = grad * m,    dlogits = grad * X * s (1 - s) w.
    Its derivatives, for incoming u (of dx) and t (of dlogits):
        d/dgrad   = u * m + t * X * s (1 - s) w      (gate and gate_backward)
        d/dx      = t * grad * s (1 - s) w           (gate_backward)
        d/dlogits = w s (1 - s) (w (1 - 2 s) t grad X + u grad [not hard])
    (the hard step has derivative 0). s comes from the gate op, which is 0 at
    padding, so every term is 0 there."""
    grad, x, logits, lengths = ctx.saved_tensors
    inv_t, hard = ctx.spec
    has_x = x is not None
    dgrad = dx = dlogits = None
    if ctx.needs_input_grad[0]:
        dgrad = _ops.gate_backward(t, x, logits, lengths, inv_t, hard)[1]
        if has_x:  # hard: the step m has derivative 0, so its logits are a constant here
            dgrad = dgrad + _ops.gate(u, logits.detach() if hard else logits, lengths, inv_t, hard)
    if has_x and ctx.needs_input_grad[1]:
        dx = _ops.gate_backward(t * grad, None, logits, lengths, inv_t, hard)[1]
    if ctx.needs_input_grad[2]:
        s = _ops.gate(None, logits, lengths, inv_t, False)
        inner = inv_t * (1 - 2 * s) * t * grad
        if has_x:
            inner = inner * x
            if not hard:
                inner = inner + u * grad
        dlogits = inv_t * s * (1 - s) * inner
    return dgrad, dx, dlogits, None, None, None


_register_autograd("gate_backward", _gate_double_backward, setup_context=_gate_bwd_setup_context)


# ---------------------------------------------------------------- fake implementations
#
# A call that mixes a meta tensor with CPU tensors dispatches here, not to a
# kernel, so these check devices with the message of csrc/checks.cpp
# (check_device): without it such a call returned uninitialised memory.

def _check_devices(op: str, ref_name: str, ref: Tensor, **tensors: Optional[Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"maskext::{op}: {name} must be on the same device as {ref_name} "
                               f"({ref.device}), got {t.device}")


def _contiguous_empty(t: Tensor) -> Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


@torch.library.register_fake("maskext::lengths_to_mask")
def _lengths_to_mask_fake(lengths, max_len, left_pad, padding, dtype):
    if max_len is None:
        max_len = torch.library.get_ctx().new_dynamic_size()
    return lengths.new_empty((lengths.shape[0], max_len), dtype=dtype)


@torch.library.register_fake("maskext::attention_mask")
def _attention_mask_fake(lengths, q_lengths, q_len, k_len, causal, wl, wr, dtype, q_offset=None,
                         q_offset_value=None, segment_ids=None, chunk=0, prefix_lengths=None,
                         prefix_value=0):
    _check_devices("attention_mask", "lengths", lengths, q_lengths=q_lengths, q_offset=q_offset,
                   segment_ids=segment_ids, prefix_lengths=prefix_lengths)
    return lengths.new_empty((lengths.shape[0], 1, q_len, k_len), dtype=dtype)


@torch.library.register_fake("maskext::mask_to_lengths")
def _mask_to_lengths_fake(mask):
    return mask.new_empty((mask.shape[0],), dtype=torch.int64)


@torch.library.register_fake("maskext::lengths_from_padded")
def _lengths_from_padded_fake(x, pad_value, dim):
    return x.new_empty((x.shape[0],), dtype=torch.int64)


def _softmax_fake_for(op):
    def fake(x, mask, bias, lengths, q_lengths, causal, wl, wr, scale, q_offset=None,
             q_offset_value=None, segment_ids=None, chunk=0, prefix_lengths=None, prefix_value=0,
             softcap=0.0, sinks=None):
        _check_devices(op, "x", x, lengths=lengths, q_lengths=q_lengths, mask=mask, bias=bias,
                       q_offset=q_offset, segment_ids=segment_ids, prefix_lengths=prefix_lengths,
                       sinks=sinks)
        return _contiguous_empty(x)
    return fake


def _softmax_backward_fake_for(op):
    def fake(grad_out, out, lengths, q_lengths, causal, wl, wr, scale, q_offset=None,
             q_offset_value=None, segment_ids=None, chunk=0, prefix_lengths=None, prefix_value=0):
        _check_devices(op, "out", out, grad_out=grad_out)
        _check_devices(op, "grad_out", grad_out, lengths=lengths, q_lengths=q_lengths,
                       q_offset=q_offset, segment_ids=segment_ids, prefix_lengths=prefix_lengths)
        return _contiguous_empty(grad_out)
    return fake


for _op in ("masked_softmax", "masked_log_softmax"):
    torch.library.register_fake(f"maskext::{_op}")(_softmax_fake_for(_op))
    torch.library.register_fake(f"maskext::{_op}_backward")(
        _softmax_backward_fake_for(f"{_op}_backward"))


@torch.library.register_fake("maskext::fill_padding")
def _fill_padding_fake(x, lengths, value, dim, left_pad):
    _check_devices("fill_padding", "x", x, lengths=lengths)
    return _contiguous_empty(x)


@torch.library.register_fake("maskext::fill_padding_")
def _fill_padding_inplace_fake(x, lengths, value, dim, left_pad):
    _check_devices("fill_padding_", "x", x, lengths=lengths)
    return None


@torch.library.register_fake("maskext::masked_pool")
def _masked_pool_fake(x, lengths, dim, mode):
    _check_devices("masked_pool", "x", x, lengths=lengths)
    d = dim % x.dim()
    return x.new_empty((x.shape[0], math.prod(x.shape[1:d]), math.prod(x.shape[d + 1:])))


@torch.library.register_fake("maskext::gate")
def _gate_fake(x, logits, lengths, inv_t, hard):
    _check_devices("gate", "logits", logits, x=x, lengths=lengths)
    return _contiguous_empty(logits)


@torch.library.register_fake("maskext::gate_backward")
def _gate_backward_fake(grad, x, logits, lengths, inv_t, hard):
    _check_devices("gate_backward", "logits", logits, x=x, grad=grad, lengths=lengths)
    dx = _contiguous_empty(x) if x is not None else logits.new_empty((0,))
    return dx, _contiguous_empty(logits)
