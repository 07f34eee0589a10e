"""The build itself: schemas registered once, kernels for the expected backends."""
import os

import pytest
import torch

import maskext

OPS = ["lengths_to_mask", "attention_mask", "mask_to_lengths", "lengths_from_padded",
       "masked_softmax", "masked_softmax_backward", "masked_log_softmax",
       "masked_log_softmax_backward", "fill_padding", "fill_padding_", "masked_pool", "gate",
       "gate_backward"]


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"maskext::{op}", "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered_when_built(op):
    has = torch._C._dispatch_has_kernel_for_dispatch_key(f"maskext::{op}", "CUDA")
    assert has == maskext.cuda_built()


def test_cuda_built_when_required():
    # .ci/run builds with MASKEXT_BUILD_CUDA=1 and sets MASKEXT_EXPECT_CUDA=1: the CUDA
    # kernels must then be compiled AND linked into the module that was imported.
    if os.environ.get("MASKEXT_EXPECT_CUDA") != "1":
        pytest.skip("MASKEXT_EXPECT_CUDA is not set")
    assert maskext.cuda_built()
