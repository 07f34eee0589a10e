"""maskext: masks and masked softmax for sequence models, straight from lengths.

Conventions (everywhere): boolean masks are True = keep; functions whose name
says ``padding`` return True = padding. Lengths are int32/int64 tensors on the
data's device. Fully masked softmax rows are exactly 0, with gradient 0.
"""
from . import _loader  # noqa: F401  (loads maskext._C, which registers the ops)
from . import nn, reference
from .ops import (
    MaskSpec,
    attention_mask,
    build_info,
    cuda_built,
    fill_padding,
    fill_padding_,
    lengths_from_padded,
    lengths_to_mask,
    lengths_to_padding_mask,
    mask_to_lengths,
    masked_log_softmax,
    masked_max,
    masked_mean,
    masked_softmax,
    masked_sum,
    sigmoid_gate,
    soft_mask,
)

__version__ = "0.1.0"

__all__ = [
    "MaskSpec",
    "attention_mask",
    "build_info",
    "cuda_built",
    "fill_padding",
    "fill_padding_",
    "lengths_from_padded",
    "lengths_to_mask",
    "lengths_to_padding_mask",
    "mask_to_lengths",
    "masked_log_softmax",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "masked_sum",
    "nn",
    "reference",
    "sigmoid_gate",
    "soft_mask",
]
