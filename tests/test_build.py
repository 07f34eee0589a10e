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


def _torch_parallel_backend():
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def test_build_info_matches_the_build():
    info = maskext.build_info()
    assert info["cuda"] == maskext.cuda_built()
    assert bool(info["cuda_archs"]) == info["cuda"]
    assert info["cpu_capability"] in ("AVX2", "default")
    assert info["torch"] == torch.__version__.split("+")[0]


def test_cpu_kernels_use_torchs_parallel_backend():
    # Without OpenMP flags at::parallel_for compiles to a serial loop in the
    # extension, whatever libtorch does: every CPU kernel then runs on one core.
    info = maskext.build_info()
    backend = _torch_parallel_backend()
    if backend == "OpenMP":
        assert info["parallel_backend"] == "OpenMP" and info["openmp"] > 0
    else:
        assert info["parallel_backend"] == "native"


def test_parallel_for_runs_on_several_threads():
    n = torch.get_num_threads()
    if n < 2:
        pytest.skip("torch runs one intra-op thread here")
    used = maskext._C.parallel_threads_used(64 * n)
    assert 2 <= used <= n
