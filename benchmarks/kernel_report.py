"""Static report of the CUDA kernels, no GPU needed: registers, spills and
shared memory per kernel from ptxas, and the width of their global loads and
stores from the PTX (16-byte accesses are `v4.u32` / `v4.f32` / `v2.f64`).

    python benchmarks/kernel_report.py [--arch 90] [--out DIR]

Uses the nvcc of CUDA_HOME (or the one on PATH) with the flags of the
extension build. Writes kernel_report.md. A spill or a kernel whose fast path
has no 16-byte access is flagged.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import torch.utils.cpp_extension as ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def nvcc_path():
    home = os.environ.get("CUDA_HOME")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def flags(arch):
    inc = [f"-I{p}" for p in ext.include_paths(device_type="cuda")] if "device_type" in \
        ext.include_paths.__code__.co_varnames else [f"-I{p}" for p in ext.include_paths(cuda=True)]
    return (["-I" + os.path.join(ROOT, "csrc", "include"), f"-I{sysconfig.get_paths()['include']}"] + inc +
            ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
             "--expt-relaxed-constexpr", "-O3", "-DMASKEXT_WITH_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H",
             "-DTORCH_EXTENSION_NAME=_C", "-std=c++20", f"-arch=sm_{arch}"])


def demangle(name):
    try:
        out = subprocess.run(["c++filt"], input=name, capture_output=True, text=True).stdout.strip()
    except OSError:
        return name
    out = re.sub(r"maskext::\(anonymous namespace\)::", "", out)
    out = out.replace("c10::", "").replace("(maskext::", "(").split("(")[0]
    return out


def report(src, arch, tmp):
    base = os.path.splitext(os.path.basename(src))[0]
    # One compile that keeps its PTX: kernel names in an anonymous namespace
    # differ from one nvcc run to the next.
    res = subprocess.run([nvcc_path(), *flags(arch), "-Xptxas", "-v", "--keep", "--keep-dir", tmp,
                          "-c", src, "-o", os.path.join(tmp, base + ".o")],
                         check=True, capture_output=True, text=True)
    ptx = os.path.join(tmp, base + ".ptx")
    info, cur = {}, None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            info[cur] = {}
        elif cur and "registers" in line:
            info[cur]["regs"] = int(re.search(r"Used (\d+) registers", line).group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            info[cur]["smem"] = int(smem.group(1)) if smem else 0
        elif cur and "spill" in line:
            info[cur]["spill"] = int(re.search(r"(\d+) bytes spill stores", line).group(1))
    text = open(ptx).read()
    rows = []
    for body in re.split(r"\.entry\s+", text)[1:]:
        name = body.split("(", 1)[0]
        ld = sorted(set(re.findall(r"ld\.global(?:\.nc)?\.(v\d\.\w+)", body)))
        st = sorted(set(re.findall(r"st\.global\.(v\d\.\w+)", body)))
        i = info.get(name, {})
        rows.append((os.path.basename(src), demangle(name), i.get("regs"), i.get("spill"), i.get("smem"),
                     " ".join(ld) or "scalar", " ".join(st) or "scalar"))
    return sorted(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="90")
    ap.add_argument("--out", default=common.OUT_DIR)
    a = ap.parse_args()
    if nvcc_path() is None:
        sys.exit("kernel_report: nvcc not found (set CUDA_HOME)")
    srcs = sorted(os.path.join(ROOT, "csrc", "cuda", f) for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                  if f.endswith(".cu"))
    lines = [f"CUDA kernels for sm_{a.arch}, {common.git_commit()}: registers, spill stores (bytes), "
             "static shared memory (bytes), vector global loads / stores in the PTX.\n",
             "| file | kernel | regs | spill | smem | vector loads | vector stores |", "|---|---|---|---|---|---|---|"]
    flagged = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in srcs:
            for r in report(src, a.arch, tmp):
                lines.append("| " + " | ".join(str(c) for c in r) + " |")
                flagged += bool(r[3])
    md = "\n".join(lines) + f"\n\n{flagged} kernel(s) spill.\n"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kernel_report.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
