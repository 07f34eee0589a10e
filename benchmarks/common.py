"""Shared benchmark plumbing: timing, environment, progress, CSV/Markdown/PNG output.

Timing: CUDA with triton.testing.do_bench (CUDA events; L2 flushed between runs)
when Triton is present, else CUDA events; CPU with torch.utils.benchmark at the
process's intra-op thread count (torch.get_num_threads(), which --threads sets;
torch.utils.benchmark.Timer alone would run everything on ONE thread).
Every row records the device, torch version, git commit and date.
"""
import csv
import datetime as _dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(device: str) -> Dict[str, str]:
    return {"device": device_name(device), "torch": torch.__version__, "commit": git_commit(),
            "date": _dt.date.today().isoformat()}


def add_common_args(ap) -> None:
    """--device, --out and --threads, the same in every benchmark script."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU intra-op threads (default: torch's default, "
                         f"{torch.get_num_threads()} here)")


def apply_common_args(a) -> None:
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.device == "cpu":
        print(f"CPU benchmarks on {torch.get_num_threads()} threads", file=sys.stderr, flush=True)


def time_ms(fn: Callable[[], object], device: str, min_run_time: float = 0.5) -> float:
    """Median time of one call of fn, in ms."""
    if device == "cuda":
        try:
            from triton.testing import do_bench
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except ImportError:
            return _cuda_events_ms(fn)
    from torch.utils import benchmark
    # Warm up for as long as the timing itself: a process's first calls pay
    # one-time costs that later calls do not (here the first ~7 calls that each
    # got a fresh 64 MB output took 5x the steady time), and one warm-up call
    # left the first case of a run timing them.
    warm_until = time.perf_counter() + min_run_time
    fn()
    while time.perf_counter() < warm_until:
        fn()
    t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    t = t.blocked_autorange(min_run_time=min_run_time)
    return t.median * 1e3


def _cuda_events_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Bytes that one call of fn allocates beyond what was allocated before it
    (its output and any temporaries), at the call's peak. CUDA: the caching
    allocator's statistics (exact). CPU: the profiler's allocation events in
    time order (each op's own allocations at its start, and the frees), which
    misses a temporary that one op allocates and frees inside itself.
    (bench_hf's CUDA memory column, and tests/test_softmax.py's check of
    maskext's forward, use it too.)"""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = sorted((e.time_range.start,
                     e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.done, self.label, self.t0 = max(total, 1), 0, label, time.time()

    def step(self, what: str = ""):
        self.done += 1
        frac = self.done / self.total
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                         f"{time.time() - self.t0:5.0f}s {what[:50]:<50}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class Case:
    """One benchmark case: several providers timed on the same input, in one run."""
    op: str
    shape: str
    dtype: str
    variant: str
    bytes: int  # bytes the operation must move at least once (dense input + output)
    times: Dict[str, float] = field(default_factory=dict)  # provider -> ms (nan: unavailable)
    mem: Dict[str, float] = field(default_factory=dict)  # provider -> peak MiB (where measured)


def write_results(name: str, cases: List[Case], providers: List[str], floor: str,
                  env: Dict[str, str], out_dir: str = OUT_DIR, plot: bool = True) -> str:
    """CSV + Markdown (+ PNG when `plot` and matplotlib is installed). Returns the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{name}.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "shape", "dtype", "variant", "provider", "median_ms", "GB_per_s",
                    "x_floor", "peak_MiB", "device", "torch", "commit", "date"])
        for c in cases:
            for p in providers:
                ms = c.times.get(p, float("nan"))
                w.writerow([c.op, c.shape, c.dtype, c.variant, p, f"{ms:.6g}",
                            f"{c.bytes / ms / 1e6:.4g}" if ms == ms else "nan",
                            f"{ms / c.times[floor]:.3f}" if ms == ms else "nan",
                            f"{c.mem[p]:.4g}" if p in c.mem else "",
                            env["device"], env["torch"], env["commit"], env["date"]])
    md = markdown_table(cases, providers, floor, env)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(md)
    if plot:
        _plot(os.path.join(out_dir, f"{name}.png"), name, cases, providers, floor, env)
    return md


def markdown_table(cases: List[Case], providers: List[str], floor: str, env: Dict[str, str]) -> str:
    others = [p for p in providers if p not in ("maskext", floor)]
    head = (f"Device: {env['device']}; torch {env['torch']}; commit {env['commit']}; {env['date']}.\n"
            f"Median ms (in parentheses: the multiple of the `{floor}` time, measured in the same run); "
            f"last columns: how many times faster maskext is.\n\n")
    cols = ["op", "shape", "dtype", "case"] + providers + [f"maskext vs {p}" for p in others]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in cases:
        fl = c.times[floor]
        cells = [c.op, c.shape, c.dtype, c.variant]
        for p in providers:
            ms = c.times.get(p, float("nan"))
            cells.append("n/a" if ms != ms else f"{ms:.4g} ({ms / fl:.2f}x)")
        me = c.times.get("maskext", float("nan"))
        for p in others:
            ms = c.times.get(p, float("nan"))
            cells.append("n/a" if ms != ms or me != me else f"{ms / me:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    md = head + "\n".join(lines) + "\n"
    with_mem = [c for c in cases if c.mem]
    if with_mem:  # the memory beside the times: a second table, same rows
        mem_providers = [p for p in providers if any(p in c.mem for c in with_mem)]
        lines = ["| " + " | ".join(["op", "shape", "dtype", "case"] + mem_providers) + " |",
                 "|" + "---|" * (4 + len(mem_providers))]
        for c in with_mem:
            lines.append("| " + " | ".join([c.op, c.shape, c.dtype, c.variant] + [
                f"{c.mem[p]:.4g}" if p in c.mem else "n/a" for p in mem_providers]) + " |")
        md += ("\nPeak memory of one call beyond its inputs (MiB: its output and temporaries; "
               "`copy` writes into a tensor allocated before):\n\n" + "\n".join(lines) + "\n")
    return md


def _plot(path, title, cases, providers, floor, env):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib not installed: no {os.path.basename(path)}; pip install matplotlib)",
              file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cases)), 5))
    width = 0.8 / len(providers)
    for k, p in enumerate(providers):
        ys = [c.times.get(p, float("nan")) / c.times[floor] for c in cases]
        ax.bar([i + k * width for i in range(len(cases))], ys, width, label=p)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{c.op}\n{c.shape}\n{c.dtype} {c.variant}" for c in cases], fontsize=7)
    ax.set_ylabel(f"time / {floor} time (lower is better)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_title(f"{title}: {env['device']}, torch {env['torch']}, {env['commit']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
