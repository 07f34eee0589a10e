"""Static report of the CUDA kernels, no GPU needed: registers, spills and
shared memory per kernel from ptxas; from the SASS (what the GPU runs, read
with the nvdisasm or cuobjdump that ship inside triton or the CUDA toolkit) the
count of global loads and stores by width (128-bit, 64, 32, narrower) and of
local memory accesses; the occupancy that the registers allow.

The counts are static (instructions in the code, every path). To tell the
body of a row from its scalar head and tail, the kernels are compiled with
-lineinfo and each store is charged to the source line it comes from (the
innermost one, through inlining): lines tagged `[edge]` in the source are
head/tail code, every other narrower-than-128-bit store is counted in the
"body STG <128" column, which must be 0 in the fp16, bf16 and fp32 softmax
kernels. Without nvdisasm (cuobjdump only) there is no line information and
every store counts as body.

    python benchmarks/kernel_report.py [--arch 90] [--out DIR]

Uses the nvcc of CUDA_HOME (or the one on PATH) with the flags of the
extension build. Writes kernel_report.md. Spills and narrow global stores are
counted in the last line.
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


def tool_path(name):
    """`name` (cuobjdump, nvdisasm) of the CUDA toolkit, else the one triton ships
    (a CUDA torch has it)."""
    home = os.environ.get("CUDA_HOME")
    cands = [os.path.join(home, "bin", name)] if home else []
    cands.append(shutil.which(name) or "")
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                  name))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.exists(c)), None)


# SASS global accesses: LDG.E[.128|.64|.U16|.S16|.U8|.S8][...] and STG.E[...];
# no width suffix means 32 bits.
_WIDTH = {"128": "128", "64": "64", "U16": "<32", "S16": "<32", "U8": "<32", "S8": "<32"}


def sass_text(obj, tmp):
    """SASS of the cubins in obj, with source lines if nvdisasm is there."""
    dump, disasm = tool_path("cuobjdump"), tool_path("nvdisasm")
    if dump is None:
        return ""
    if disasm is None:
        return subprocess.run([dump, "-sass", obj], capture_output=True, text=True).stdout
    cubins = os.path.join(tmp, "cubins_" + os.path.basename(obj))
    os.makedirs(cubins, exist_ok=True)
    subprocess.run([dump, "-xelf", "all", os.path.abspath(obj)], cwd=cubins, check=True,
                   capture_output=True)
    return "".join(subprocess.run([disasm, "-g", "-c", os.path.join(cubins, f)], check=True,
                                  capture_output=True, text=True).stdout
                   for f in sorted(os.listdir(cubins)) if f.endswith(".cubin"))


def edge_lines(path, cache={}):
    """Line numbers of `path` tagged [edge] (scalar head/tail code)."""
    if path not in cache:
        try:
            with open(path) as f:
                cache[path] = {i for i, line in enumerate(f, 1) if "[edge]" in line}
        except OSError:
            cache[path] = set()
    return cache[path]


def sass_counts(obj, tmp):
    """{mangled kernel name: {"ld128": n, ..., "st<32": n, "body_st<128": n, "local": n, "instrs": n}}
    from the SASS in obj."""
    text = sass_text(obj, tmp)
    out, cur, edge = {}, None, False
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line) or re.match(r"\.text\.(\S+):", line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        if cur is None:
            continue
        # nvdisasm -g: '//## File "path", line N[ inlined at ...]' before the code of line N
        m = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if m:
            edge = int(m.group(2)) in edge_lines(m.group(1))
            continue
        if re.search(r"/\*[0-9a-f]{4,}\*/\s+\S", line):  # one SASS instruction
            cur["instrs"] = cur.get("instrs", 0) + 1
        m = re.search(r"\b(LDG|STG)\.E((?:\.\w+)*)", line)
        if m:
            width = "32"
            for tok in m.group(2).split(".")[1:]:
                width = _WIDTH.get(tok, width)
            key = ("ld" if m.group(1) == "LDG" else "st") + width
            cur[key] = cur.get(key, 0) + 1
            if key.startswith("st") and width != "128" and not edge:
                cur["body_st<128"] = cur.get("body_st<128", 0) + 1
        elif re.search(r"\b(LDL|STL)\b", line):
            cur["local"] = cur.get("local", 0) + 1
    return out


def reg_occupancy(regs):
    """Warps per SM (of 64 on sm_80/sm_90) that the registers allow: 64K
    registers, allocated per warp in units of 256."""
    if not regs:
        return None
    per_warp = -(-regs * 32 // 256) * 256
    return min(64, 65536 // per_warp)


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
    res = subprocess.run([nvcc_path(), *flags(arch), "-lineinfo", "-Xptxas", "-v", "--keep",
                          "--keep-dir", tmp,
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
    sass = sass_counts(os.path.join(tmp, base + ".o"), tmp)
    rows = []
    for name, i in info.items():
        c = sass.get(name, {})
        occ = reg_occupancy(i.get("regs"))

        def widths(kind):
            return "/".join(str(c.get(kind + w, 0)) for w in ("128", "64", "32", "<32"))
        rows.append((os.path.basename(src), demangle(name), i.get("regs"), i.get("spill"), i.get("smem"),
                     f"{occ}/64" if occ else "?", widths("ld"), widths("st"), c.get("body_st<128", 0),
                     c.get("local", 0), c.get("instrs", 0)))
    return sorted(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="90")
    ap.add_argument("--out", default=common.OUT_DIR)
    ap.add_argument("--files", nargs="*", help="only these csrc/cuda sources (e.g. softmax.cu)")
    a = ap.parse_args()
    if nvcc_path() is None:
        sys.exit("kernel_report: nvcc not found (set CUDA_HOME)")
    srcs = sorted(os.path.join(ROOT, "csrc", "cuda", f) for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                  if f.endswith(".cu") and (not a.files or f in a.files))
    if tool_path("cuobjdump") is None:
        print("kernel_report: cuobjdump not found: no SASS counts", file=sys.stderr)
    elif tool_path("nvdisasm") is None:
        print("kernel_report: nvdisasm not found: no source lines, every store counts as body",
              file=sys.stderr)
    lines = [f"CUDA kernels for sm_{a.arch}, {common.git_commit()}: registers, spill stores (bytes), "
             "static shared memory (bytes), warps per SM the registers allow, and from the SASS the "
             "number of global load and store instructions by width (128/64/32/narrower bits), "
             "the narrower-than-128-bit stores outside the [edge] (scalar head/tail) source lines, "
             "the local-memory accesses, and the kernel's length in SASS instructions (static: "
             "the code, not what runs).\n",
             "| file | kernel | regs | spill | smem | warps/SM | LDG 128/64/32/<32 | STG 128/64/32/<32 "
             "| body STG <128 | local | SASS instrs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    spills = narrow = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in srcs:
            for r in report(src, a.arch, tmp):
                lines.append("| " + " | ".join(str(c) for c in r) + " |")
                spills += bool(r[3])
                narrow += r[8] > 0 and "softmax" in r[1] and "double" not in r[1]
    md = "\n".join(lines) + (f"\n\n{spills} kernel(s) spill; {narrow} fp16/bf16/fp32 softmax "
                             "kernel(s) have body-path global stores narrower than 128 bits.\n")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kernel_report.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
