"""Modules over the maskext ops."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops


class MaskedSoftmax(nn.Module):
    """``maskext.masked_softmax`` as a module: the mask kind (``causal``,
    ``window``, ``chunk``) and the score transform (``scale``, ``softcap``) are
    fixed at construction, the per-batch parts (``mask``, ``lengths``,
    ``q_lengths``, ``bias``, ``q_offset``, ``segment_ids``, ``prefix_lengths``,
    ``sinks``) are given to ``forward``; or the whole description as
    ``forward(x, spec=maskext.MaskSpec(...))``, for a module built without
    ``causal``, ``window`` and ``chunk``."""

    def __init__(self, *, causal: bool = False, window: Optional[Sequence[Optional[int]]] = None,
                 scale: Optional[float] = None, chunk: Optional[int] = None,
                 softcap: Optional[float] = None):
        super().__init__()
        self.causal = causal
        self.window = None if window is None else tuple(window)
        self.scale = scale
        self.chunk = chunk
        self.softcap = softcap

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                q_lengths: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                q_offset=None, segment_ids: Optional[Tensor] = None,
                prefix_lengths=None, spec: Optional[ops.MaskSpec] = None,
                sinks: Optional[Tensor] = None) -> Tensor:
        return ops.masked_softmax(x, mask, lengths=lengths, q_lengths=q_lengths, causal=self.causal,
                                  window=self.window, scale=self.scale, bias=bias,
                                  q_offset=q_offset, segment_ids=segment_ids, chunk=self.chunk,
                                  prefix_lengths=prefix_lengths, spec=spec, softcap=self.softcap,
                                  sinks=sinks)

    def extra_repr(self) -> str:
        return (f"causal={self.causal}, window={self.window}, scale={self.scale}, "
                f"chunk={self.chunk}, softcap={self.softcap}")


class MaskGenerator(nn.Module):
    """A learnable soft mask: ``sigmoid(linear(x) / temperature)``, in (0, 1),
    shaped like ``linear(x)``; steps at or past ``lengths`` (dim 1 of ``x``,
    ``(B, T, input_size)``) are exactly 0 whatever the layer says.

    ``hard=True``: the forward gives 0/1 (threshold 0.5) and the backward the
    sigmoid's gradient (straight-through), for learned binary masks.
    """

    def __init__(self, input_size: int, latent_size: int, *, temperature: float = 1.0,
                 hard: bool = False, bias: bool = True):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"MaskGenerator: temperature must be > 0, got {temperature!r}")
        self.linear = nn.Linear(input_size, latent_size, bias=bias)
        self.temperature = float(temperature)
        self.hard = hard

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """The mask, ``(B, T, latent_size)``."""
        return ops.soft_mask(self.linear(x), lengths, temperature=self.temperature, hard=self.hard)

    def gate(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``x * mask`` (needs ``latent_size == input_size``): sigmoid, multiply and
        padding zeroing fused in one kernel after the matmul."""
        if self.linear.out_features != self.linear.in_features:
            raise ValueError("MaskGenerator.gate: needs latent_size == input_size, got "
                             f"{self.linear.out_features} != {self.linear.in_features}")
        return ops.sigmoid_gate(x, self.linear(x), lengths, temperature=self.temperature,
                                hard=self.hard)

    def attention_bias(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``log(mask)`` over keys as ``(B, latent_size, 1, T)``, padded keys ``-inf``:
        pass it as ``bias=`` to :func:`maskext.masked_softmax` on scores
        ``(B, H, Tq, T)`` (``latent_size`` 1 or H), so that attention
        probabilities are proportional to ``mask * exp(score)``."""
        z = self.linear(x) / self.temperature
        logm = F.logsigmoid(z)
        if self.hard:  # 0 / -inf forward, the soft gradient backward
            hard = torch.where(z >= 0, 0.0, float("-inf")).to(logm.dtype)
            logm = logm + (hard - logm).detach()
        if lengths is not None:
            logm = ops.fill_padding(logm, lengths, float("-inf"), dim=1)
        return logm.transpose(1, 2).unsqueeze(2)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard={self.hard}"
