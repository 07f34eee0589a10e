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


def test_error_messages_format_numbers():
    # Formatting a number into a C++ error message goes through the C++ runtime's
    # locale facets. An extension linked with its own static copy of libstdc++
    # (a toolchain adding -static-libstdc++) cut this message short at the first
    # number on one machine and segfaulted on another: run it in a child process
    # so that a crash fails this test instead of the whole session.
    import subprocess
    import sys
    code = ("import torch, maskext\n"
            "try:\n"
            "    maskext.lengths_to_mask(torch.tensor([[1], [2]]), 3)\n"
            "except RuntimeError as e:\n"
            "    print(str(e).splitlines()[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"child exited with {r.returncode}: {r.stderr[-2000:]}"
    assert "lengths must be 1-D, got shape [2, 1]" in r.stdout, r.stdout


def test_one_cpp_runtime_shared_with_torch():
    # The extension must use the libstdc++.so that torch uses (setup.py links it
    # explicitly), not a static copy of its own.
    import shutil
    import subprocess
    import maskext._C as ext
    readelf = shutil.which("readelf")
    if readelf is None or not ext.__file__.endswith(".so"):
        pytest.skip("needs readelf and an ELF shared object")
    torch_c10 = os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")
    def needed(path):
        out = subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout
        return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    if not any(n.startswith("libstdc++") for n in needed(torch_c10)):
        pytest.skip("torch does not link libstdc++.so dynamically here")
    assert any(n.startswith("libstdc++") for n in needed(ext.__file__)), (
        f"{ext.__file__} does not link libstdc++.so: it carries its own static C++ "
        "runtime (see shared_cxx_runtime_flags in setup.py)")
