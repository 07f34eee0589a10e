"""Loads the compiled extension, with a clear message when it cannot be."""
import platform

import torch


def _check_cpu():
    # x86-64 builds use AVX2/FMA for the CPU kernels (see setup.py, MASKEXT_CPU_AVX2).
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        raise ImportError(
            f"maskext: this CPU reports capability {cap!r}, but maskext was built with AVX2; "
            "rebuild with MASKEXT_CPU_AVX2=0 pip install --no-build-isolation .")


try:
    from . import _C  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"maskext: the compiled extension maskext._C could not be loaded ({e}). Build it with "
        "`pip install --no-build-isolation -e .` against the torch you run "
        f"(this is torch {torch.__version__}).") from e

_check_cpu()
