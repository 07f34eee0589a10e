"""One screen from the logs and tables of benchmarks/gpu_check.sh: GPU, versions,
commit, build time, test counts, sanitizer verdicts, and per shape and dtype
the headline ratios of the softmax sweep, and what ncu measured of a few kernels.

    python benchmarks/gpu_summary.py LOG_DIR [--build-seconds S] [--total-seconds S] [--dry-run 0|1]
"""
import argparse
import csv
import glob
import math
import os
import re
from collections import defaultdict


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _last_line(path):
    lines = [ln for ln in _read(path).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no log)"


def _softmax_rows(log_dir):
    """{(pass, shape, dtype, variant): {provider: ms}} from every softmax CSV, and
    {key: maskext's peak MiB} where measured."""
    out, mem = defaultdict(dict), {}
    device = ""
    for path in sorted(glob.glob(os.path.join(log_dir, "softmax_*.csv"))):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                key = (r["op"].split()[-1], r["shape"], r["dtype"], r["variant"])
                out[key][r["provider"]] = float(r["median_ms"])
                if r["provider"] == "maskext" and r.get("peak_MiB"):
                    mem[key] = float(r["peak_MiB"])
                device = r["device"]
    return out, mem, device


def memory_line(mem):
    """Whether maskext's forward allocated only its output (the target)."""
    size = {"fp16": 2, "bf16": 2, "fp32": 4}
    fwd = {k: v for k, v in mem.items() if k[0] == "forward" and k[2] in size}
    if not fwd:
        return "memory: not measured"
    extra = {k: v - math.prod(int(n) for n in k[1].split("x")) * size[k[2]] / 2**20
             for k, v in fwd.items()}
    worst = max(extra, key=extra.get)
    return (f"memory: maskext forward allocated only its output in "
            f"{sum(e <= 0.01 for e in extra.values())} of {len(extra)} cases (most beyond it: "
            f"{extra[worst]:.3g} MiB, {' '.join(worst[1:])})")


def _fmt(v):
    return "  -  " if v is None or v != v else f"{v:5.2f}"


def headline(rows):
    """Per dtype, one line per shape: maskext / floor (forward full, padded,
    causal+padded, mask (the padded rows as a bool mask); backward padded),
    eager / maskext and compile / maskext (forward padded; > 1: maskext is
    faster), and the tier kernels' time (MASKEXT_STREAM=0) / the streamed
    tiers' (padded, forward and backward; > 1: streaming is faster)."""
    def ratio(key, num, den):
        t = rows.get(key, {})
        a, b = t.get(num), t.get(den)
        return None if a is None or b is None or b == 0 else a / b
    lines = []
    dtypes = sorted({k[2] for k in rows}, key=["fp16", "bf16", "fp32"].index)
    shapes = []
    for k in rows:
        if k[1] not in shapes:
            shapes.append(k[1])
    head = (f"{'shape':>18} | fwd full  pad  causal  mask (x floor) | eager/mx compile/mx (pad) "
            f"| bwd pad x floor | unstr/mx fwd bwd")
    for dt in dtypes:
        lines.append(f"-- {dt}")
        lines.append(head)
        for sh in shapes:
            f = lambda v: ("forward", sh, dt, v)  # noqa: E731
            if not any(f(v) in rows for v in ("full", "padded", "causal+padded")):
                continue
            lines.append(
                f"{sh:>18} | {_fmt(ratio(f('full'), 'maskext', 'copy'))} {_fmt(ratio(f('padded'), 'maskext', 'copy'))}"
                f" {_fmt(ratio(f('causal+padded'), 'maskext', 'copy'))} {_fmt(ratio(f('mask'), 'maskext', 'copy'))}"
                f"           |"
                f"   {_fmt(ratio(f('padded'), 'eager', 'maskext'))}    {_fmt(ratio(f('padded'), 'torch.compile', 'maskext'))}"
                f"       | {_fmt(ratio(('backward', sh, dt, 'padded'), 'maskext', 'copy'))}"
                f"         | {_fmt(ratio(f('padded'), 'maskext-unstreamed', 'maskext'))}"
                f" {_fmt(ratio(('backward', sh, dt, 'padded'), 'maskext-unstreamed', 'maskext'))}")
    return lines


def ncu_lines(text):
    """One line per kernel profiled by ncu (benchmarks/ncu_cases.py): name,
    grid, duration, DRAM throughput, SM throughput (issue-bound kernels show it
    high), achieved occupancy, registers."""
    out, cur = [], None
    want = {"Duration": "dur", "DRAM Throughput": "dram", "Compute (SM) Throughput": "sm",
            "Achieved Occupancy": "occ", "Registers Per Thread": "regs"}
    for ln in text.splitlines():
        grid = re.search(r"\((\d+, \d+, \d+)\)x\((\d+, \d+, \d+)\)", ln)
        if grid:
            name = re.search(r"(\w+)(<[^<>]*>)?\(", ln)
            cur = {"name": "".join(g or "" for g in name.groups()) if name else "?",
                   "grid": f"grid ({grid.group(1)}) x ({grid.group(2)})"}
            out.append(cur)
            continue
        m = re.match(r"\s*(Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy"
                     r"|Registers Per Thread)\s+(\S+)\s+([\d.,]+)\s*$", ln)
        if cur is not None and m:
            unit = "" if m.group(1) == "Registers Per Thread" else " " + m.group(2)
            cur[want[m.group(1)]] = m.group(3) + unit
    return [f"  {k['name']} {k['grid']}: {k.get('dur', '?')}, DRAM {k.get('dram', '?')}, "
            f"SM {k.get('sm', '?')}, occupancy {k.get('occ', '?')}, {k.get('regs', '?')} regs"
            for k in out]


def _steps(text):
    """steps.txt as (step name, its first result line), in order."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("== "):
            out.append([re.sub(r" \(\d\d:\d\d:\d\d, \d+s\)$", "", ln[3:]), ""])
        elif ln.strip().startswith("-> ") and out and not out[-1][1]:
            out[-1][1] = ln.strip()[3:]
    return [tuple(x) for x in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log_dir")
    ap.add_argument("--build-seconds", type=int, default=0)
    ap.add_argument("--total-seconds", type=int, default=0)
    ap.add_argument("--dry-run", type=int, default=0)
    a = ap.parse_args()
    d = a.log_dir
    env = _read(os.path.join(d, "env.txt"))
    gpu = re.search(r"NVIDIA [A-Z0-9][^|\n]*?(?=\s{2,}|\|)", env)
    torch_line = next((ln for ln in env.splitlines() if ln.startswith("torch ")), "torch ?")
    commit = next((ln for ln in env.splitlines() if ln.startswith("commit ")), "commit ?")
    rows, mem, device = _softmax_rows(d)
    print("maskext GPU check" + (" -- DRY RUN on the CPU: no GPU result below" if a.dry_run else ""))
    print(f"device: {gpu.group(0).strip() if gpu else device or 'unknown'}; {torch_line}; {commit}")
    print(f"build {a.build_seconds} s; whole run {a.total_seconds} s")
    steps = _steps(_read(os.path.join(d, "steps.txt")))
    print(f"robustness tests: {_last_line(os.path.join(d, 'tests_robustness.log'))}")
    print(f"tests: {next((r for name, r in steps if name.startswith('tests')), 'not run')}")
    for tool in ("memcheck", "racecheck", "synccheck"):
        p = os.path.join(d, f"sanitizer_{tool}.log")
        if os.path.exists(p):
            text = _read(p)
            errs = re.search(r"ERROR SUMMARY: (\d+) error", text)
            verdict = (f"{errs.group(1)} errors" if errs else
                       "ok" if "sanitize_cases: ok" in text else "FAILED or cut short")
            print(f"sanitizer {tool}: {verdict}")
    for name, res in steps:
        if any(w in res for w in ("FAILED", "TIME LIMIT", "time budget spent", "FINDINGS")):
            print(f"step {name}: {res}")
    if rows:
        print("softmax: maskext time / copy floor (lower is better; < 1 is below a copy), and how")
        print("many times faster maskext is than eager and torch.compile; unstr/mx: the tier kernels'")
        print("time (MASKEXT_STREAM=0) over the streamed tiers' (> 1: streaming is faster):")
        for ln in headline(rows):
            print(ln)
        print(memory_line(mem))
    else:
        print("softmax: no benchmark table")
    ncu = ncu_lines(_read(os.path.join(d, "ncu.log")))
    if ncu:
        print("ncu (first kernels of benchmarks/ncu_cases.py, and mask building and the gate):")
        other = [ln for ln in ncu if "interval_mask" in ln or "gate_kernel" in ln]
        for ln in [ln for ln in ncu if ln not in other][:10] + other[:2]:
            print(ln)
    print("everything else: gpu_check.tar.gz (logs, CSV, Markdown)")


if __name__ == "__main__":
    main()
