"""Modules over the maskext ops."""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import ops


class MaskedSoftmax(nn.Module):
    """``maskext.masked_softmax`` as a module: the mask kind (``causal``,
    ``window``, ``scale``) is fixed at construction, the per-batch parts
    (``mask``, ``lengths``, ``q_lengths``, ``bias``) are given to ``forward``."""

    def __init__(self, *, causal: bool = False, window: Optional[Sequence[Optional[int]]] = None,
                 scale: Optional[float] = None):
        super().__init__()
        self.causal = causal
        self.window = None if window is None else tuple(window)
        self.scale = scale

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                q_lengths: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        return ops.masked_softmax(x, mask, lengths=lengths, q_lengths=q_lengths, causal=self.causal,
                                  window=self.window, scale=self.scale, bias=bias)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, window={self.window}, scale={self.scale}"
