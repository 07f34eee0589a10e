"""Build maskext and its one extension module, maskext._C.

Environment:
  MASKEXT_BUILD_CUDA=auto|0|1  auto (default): CUDA kernels when torch is a CUDA
                               build and nvcc is found; 1: fail if they cannot be
                               built; 0: CPU only. A GPU is never needed to build.
  MASKEXT_CPU_AVX2=auto|0      x86-64 CPU kernels use AVX2+FMA (default); 0 builds
                               portable CPU kernels.
  TORCH_CUDA_ARCH_LIST         default when unset and no GPU is visible: 8.0;8.6;9.0+PTX
  MAX_JOBS                     parallel compile jobs (ninja).

The CPU kernels are compiled with the intra-op parallel backend of the installed
torch (OpenMP on Linux wheels, as torch itself): without it at::parallel_for
runs every kernel on one core.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;9.0+PTX"


def log(msg):
    print(f"maskext setup: {msg}", file=sys.stderr, flush=True)


def find_cuda_home():
    """CUDA_HOME if set; else the toolkit that the nvcc on PATH really runs
    (nvcc may be a wrapper script outside the toolkit)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-E", "-"], input="",
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"^#\$ TOP=(.*)/bin/\.\.$", out.stderr, re.M)
        if m and os.path.exists(os.path.join(m.group(1), "bin", "nvcc")):
            return m.group(1)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def cuda_plan():
    """(build_cuda, reason): decided by torch.version.cuda and the toolkit, never
    by whether a GPU is visible."""
    mode = os.environ.get("MASKEXT_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"maskext setup: MASKEXT_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "MASKEXT_BUILD_CUDA=0"
    problem = None
    cuda_home = find_cuda_home()
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    elif cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        problem = "nvcc not found: set CUDA_HOME to the CUDA toolkit"
    if problem:
        if mode == "1":
            sys.exit(f"maskext setup: MASKEXT_BUILD_CUDA=1 but the CUDA kernels cannot be built: {problem}")
        return False, problem
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    return True, f"CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}"


def cpu_flags():
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return []
    if os.environ.get("MASKEXT_CPU_AVX2", "auto").strip() == "0":
        return []
    # at::vec picks its AVX2 implementation (Sleef exp from libtorch_cpu) from these.
    return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


def torch_parallel_backend():
    m = re.search(r"ATen parallel backend: (\S+)", torch.__config__.parallel_info())
    return m.group(1) if m else "unknown"


def openmp_flags():
    """(compile flags, link flags) that give the CPU kernels torch's OpenMP backend,
    checked by compiling a small OpenMP program; ([], []) with a warning when the
    compiler has no OpenMP (e.g. Apple clang): the build goes on, single-threaded."""
    backend = torch_parallel_backend()
    if backend != "OpenMP":
        # A native thread pool lives inside libtorch: at::parallel_for needs no flags.
        log(f"torch's parallel backend is {backend}: no OpenMP flags needed")
        return [], []
    cxx = os.environ.get("CXX", "c++")
    flags = ["-Xpreprocessor", "-fopenmp"] if sys.platform == "darwin" else ["-fopenmp"]
    libs = ["-lomp"] if sys.platform == "darwin" else ["-fopenmp"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { int n = 0;\n#pragma omp parallel\n"
                    "{ n = omp_get_num_threads(); }\nreturn n > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run([cxx, *flags, src, *libs, "-o", os.path.join(tmp, "a.out")],
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        log(f"WARNING: torch uses OpenMP but {cxx} cannot compile OpenMP code: the CPU kernels "
            "will run on ONE thread (maskext.build_info()['parallel_backend'] says so)")
        return [], []
    log(f"CPU kernels use torch's OpenMP backend ({' '.join(flags)})")
    return flags, libs


def shared_cxx_runtime_flags():
    """Link flags that make the extension use the process's one libstdc++.so
    (the one torch uses). Some toolchains link libstdc++ statically by default
    (seen on a CUDA image whose /opt/gcc g++ adds -static-libstdc++ and ships
    only libstdc++.a): the extension then carries a second copy of the C++
    runtime whose locale facets do not match the streams torch hands it, and
    formatting a number into an error message segfaults or cuts the message
    short. `-lstdc++` is not enough there (the linker takes the .a when it
    finds no .so first), so name the very file torch has loaded in this
    process, ahead of the driver's implicit -lstdc++: every symbol then comes
    from the shared library. With a normal g++ it changes nothing."""
    if not sys.platform.startswith("linux"):
        return []
    lib = loaded_libstdcxx()
    return ["-Wl,--push-state,--no-as-needed", lib or "-l:libstdc++.so.6", "-Wl,--pop-state"]


def loaded_libstdcxx():
    """Path of the libstdc++.so this process (which imported torch) uses, or None."""
    import torch  # noqa: F401  (loads torch's libstdc++)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libstdc++.so" in path and os.path.isfile(path):
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def cuda_archs_define():
    """The CUDA architectures compiled, for maskext.build_info() (no ';' on the
    command line: the list is comma-separated)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        archs = ";".join("{}.{}".format(*torch.cuda.get_device_capability(i))
                         for i in range(torch.cuda.device_count()))
    archs = ",".join(a for a in re.split(r"[;\s]+", archs) if a)
    return f"-DMASKEXT_CUDA_ARCHS={archs}"


def extensions():
    build_cuda, reason = cuda_plan()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension  # after CUDA_HOME is set

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    omp_compile, omp_link = openmp_flags()
    link = omp_link + shared_cxx_runtime_flags()
    # -Wno-unknown-pragmas: torch's vec headers carry `#pragma unroll`, which gcc ignores.
    cxx = ["-O3", "-Wno-unknown-pragmas"] + cpu_flags() + omp_compile
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if not build_cuda:
        log(f"building the CPU kernels only ({reason})")
        return [CppExtension("maskext._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx}, extra_link_args=link)]
    log(f"building the CPU and CUDA kernels ({reason})")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = ["-O3", "-DMASKEXT_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
    cxx += ["-DMASKEXT_WITH_CUDA", cuda_archs_define()]
    return [CUDAExtension("maskext._C", sources, include_dirs=include_dirs,
                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


setup(
    name="maskext",
    version="0.1.0",
    description="Fused masks and masked softmax for sequence models, from lengths (PyTorch C++/CUDA extension)",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="maskext developers",
    license="BSD-3-Clause",  # SPDX expression (PEP 639); the text is in LICENSE
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Environment :: GPU :: NVIDIA CUDA",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=["maskext"],
    python_requires=">=3.10",
    # numpy: torch does not require it, but without it `import torch` warns
    # "Failed to initialize NumPy" at every import (torch/_subclasses/functional_tensor.py).
    install_requires=["torch>=2.6", "numpy"],
    # maskext.hf, the Hugging Face transformers backend: pip install maskext[hf]
    extras_require={"hf": ["transformers>=5"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
    zip_safe=False,
)
