"""Masked softmax, forward and backward: maskext vs eager PyTorch vs
torch._masked_softmax vs torch.compile of the eager code vs a plain copy.

    python benchmarks/bench_softmax.py [--device cpu|cuda] [--threads N] [--full] [--dtypes L] [--shapes L] [--out DIR]

Lengths are uniform in [Tk/2, Tk] ("padded"), all Tk ("full"), or padded plus
causal ("causal+padded", Tq == Tk); "mask" (forward, a few shapes) is the
padded case with maskext given the bool mask instead of the lengths (its
mask/bias path). Every provider's output is checked against maskext's before
it is timed; a second table gives the memory each call allocates at its peak.
"""
import argparse
import math
import os
import sys

import torch
import torch._dynamo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import maskext  # noqa: E402

# One static compile per case: never let dynamo fall back to eager after its
# default recompile limit (that would report eager times as torch.compile's).
for _name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
              "accumulated_recompile_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 4096)

# "softmax": an unmasked x.softmax(-1) of the same tensor (forward only), the
# time people know; maskext reads only the visible keys, so it can be below it.
PROVIDERS = ["maskext", "eager", "torch._masked_softmax", "torch.compile", "softmax", "copy"]
# On CUDA also "maskext-unstreamed": maskext with MASKEXT_STREAM=0, the
# register tiers' kernels of a block per row group instead of the streamed
# tiers (the next row's copies in flight through this one), to measure one
# against the other in the same run.
UNSTREAMED = "maskext-unstreamed"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

CUDA_SHAPES = [(16, 16, 1024, 1024), (4, 16, 1000, 1000), (2, 16, 4096, 4096),
               (1, 16, 16384, 16384), (64, 32, 1, 8192), (256, 8, 128, 128), (8, 16, 1, 65536)]
CPU_SHAPES = [(8, 8, 512, 512), (16, 8, 1, 4096), (2, 2, 64, 64)]
CPU_SHAPES_FULL = CPU_SHAPES + [(4, 8, 1000, 1000), (64, 8, 128, 128)]


# "mask": the padded case given as a bool mask (B, 1, 1, Tk) instead of
# lengths (maskext's mask/bias kernel path); forward only, a few shapes.
MASK_SHAPES = [(16, 16, 1024, 1024), (2, 16, 4096, 4096), (8, 8, 512, 512)]


def _variants(shape):
    out = ["full", "padded"]
    if shape[2] == shape[3]:
        out.append("causal+padded")
    if shape in MASK_SHAPES:
        out.append("mask")
    return out


def _inputs(shape, dtype, variant, device):
    B, H, Tq, Tk = shape
    x = torch.randn(shape, device=device, dtype=dtype)
    if variant == "full":
        L = torch.full((B,), Tk, device=device)
    else:
        L = torch.randint(Tk // 2, Tk + 1, (B,), device=device)
    causal = variant.startswith("causal")
    keep = (torch.arange(Tk, device=device) < L[:, None])[:, None, None, :]
    if causal:
        keep = keep & torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)
    if variant == "mask":
        L = None  # maskext gets `keep` itself
    return x, L, causal, keep


def _eager(x, keep):
    return x.masked_fill(~keep, float("-inf")).softmax(-1)


def _softmax_bwd_formula(dy, y):
    return y * (dy - (dy * y).sum(-1, keepdim=True))


_FAILURES = (RuntimeError, NotImplementedError, AttributeError, torch.OutOfMemoryError)


def _skipped(what, e):
    print(f"\n  {what} skipped: {str(e).splitlines()[0][:120]}", file=sys.stderr)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check(name, got, want, dtype):
    atol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not torch.allclose(got.float().nan_to_num(), want.float(), atol=atol, rtol=1e-2):
        err = (got.float().nan_to_num() - want.float()).abs().max().item()
        print(f"\n  WARNING: {name} differs from maskext by {err:.3g}", file=sys.stderr)


def _checked(fns, ref, dtype):
    """The baselines that run (unsupported or out of memory: None, the cell
    reads n/a), each checked against maskext's result `ref`."""
    for name in ("eager", "torch._masked_softmax", "torch.compile"):
        try:
            _check(name, fns[name](), ref, dtype)
        except _FAILURES as e:
            _skipped(name, e)
            fns[name] = None
    return fns


def _unstreamed(fn):
    """fn called with MASKEXT_STREAM=0 (read by maskext at each call)."""
    def call():
        os.environ["MASKEXT_STREAM"] = "0"
        try:
            return fn()
        finally:
            del os.environ["MASKEXT_STREAM"]
    return call


def forward_providers(x, L, causal, keep):
    y = torch.empty_like(x)
    keep_full = keep.expand_as(x)
    compiled = torch.compile(_eager, dynamic=False)
    kw = dict(lengths=L, causal=causal) if L is not None else dict(mask=keep)
    ref = maskext.masked_softmax(x, **kw)
    fns = {
        "maskext": lambda: maskext.masked_softmax(x, **kw),
        UNSTREAMED: _unstreamed(lambda: maskext.masked_softmax(x, **kw)),
        "eager": lambda: _eager(x, keep),
        "torch._masked_softmax": lambda: torch._masked_softmax(x, ~keep_full, -1, 2),
        "torch.compile": lambda: compiled(x, keep),
        "softmax": lambda: x.softmax(-1),
        "copy": lambda: y.copy_(x),
    }
    return _checked(fns, ref, x.dtype)


def backward_providers(x, L, causal, keep):
    y = maskext.masked_softmax(x, lengths=L, causal=causal)
    dy = torch.randn_like(x)
    out = torch.empty_like(x)
    keep_full = keep.expand_as(x)
    compiled = torch.compile(_softmax_bwd_formula, dynamic=False)
    # The backward op as autograd runs it in a backward pass without a graph to
    # build (grad mode off): below the autograd layer (maskext.ops._call).
    bwd_op = torch.ops.maskext.masked_softmax_backward

    def bwd():
        with torch.no_grad():
            return maskext.ops._call(bwd_op, (), dy, y, L, None, causal, -1, -1, 1.0, None, None,
                                     None, 0, None, 0)

    ref = bwd()
    fns = {
        "maskext": bwd,
        UNSTREAMED: _unstreamed(bwd),
        "eager": lambda: torch._softmax_backward_data(dy, y, -1, x.dtype),
        "torch._masked_softmax": lambda: torch.ops.aten._masked_softmax_backward(dy, y, ~keep_full, -1),
        "torch.compile": lambda: compiled(dy, y),
        "softmax": None,
        "copy": lambda: out.copy_(x),
    }
    return _checked(fns, ref, x.dtype)


def run(device="cpu", full=False, dtypes=None, shapes=None, out_dir=common.OUT_DIR,
        min_run_time=0.5):
    if shapes is None:
        shapes = CUDA_SHAPES if device == "cuda" else (CPU_SHAPES_FULL if full else CPU_SHAPES)
    if dtypes is None:
        dtypes = list(DTYPES) if device == "cuda" else ["fp32"]
    # Most telling first (results are written after every case, so a sweep cut
    # short by a time limit still has them): forward before backward, padded
    # before causal before unpadded.
    order = {"padded": 0, "causal+padded": 1, "full": 2, "mask": 3}
    plan = [(s, d, v, pas) for pas in ("forward", "backward") for d in dtypes
            for v in sorted(order, key=order.get) for s in shapes if v in _variants(s)
            and not (v == "mask" and pas == "backward")]
    if device == "cpu" and not full:  # keep the CPU demo short: no full-length rows
        plan = [p for p in plan if p[2] != "full"]
    providers = PROVIDERS[:1] + [UNSTREAMED] + PROVIDERS[1:] if device == "cuda" else PROVIDERS
    env = common.env_info(device)
    name = f"softmax_{device}_{'-'.join(dtypes)}"
    cases = []
    bar = common.Progress(len(plan), "masked_softmax")
    for shape, dname, variant, pas in plan:
        bar.step(f"{pas} {shape} {dname} {variant}")
        dtype = DTYPES[dname]
        try:
            x, L, causal, keep = _inputs(shape, dtype, variant, device)
            make = forward_providers if pas == "forward" else backward_providers
            fns = make(x, L, causal, keep)
        except _FAILURES as e:  # maskext itself failed here (or the inputs do not fit)
            _skipped(f"{pas} {shape} {dname} {variant}", e)
            continue
        nbytes = x.numel() * x.element_size() * (2 if pas == "forward" else 3)
        case = common.Case(f"softmax {pas}", "x".join(map(str, shape)), dname, variant, nbytes)
        for p in providers:
            try:
                case.times[p] = common.time_ms(fns[p], device, min_run_time) if fns[p] else math.nan
                # the target: maskext's forward allocates only its output
                if fns[p] and p != UNSTREAMED:
                    case.mem[p] = common.peak_bytes(fns[p], device) / 2**20
            except _FAILURES as e:
                _skipped(p, e)
                case.times[p] = math.nan
        cases.append(case)
        # Written after every case, so a run cut short still leaves its results.
        common.write_results(name, cases, providers, "copy", env, out_dir, plot=False)
        del x, L, keep, fns
        if device == "cuda":
            torch.cuda.empty_cache()
    return common.write_results(name, cases, providers, "copy", env, out_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_common_args(ap)
    ap.add_argument("--full", action="store_true", help="more shapes/cases on the CPU")
    ap.add_argument("--dtypes", default=None, help="comma list of fp16,bf16,fp32")
    ap.add_argument("--shapes", default=None,
                    help="comma list of BxHxTqxTk shapes (default: the device's sweep)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="CPU seconds per timing")
    a = ap.parse_args()
    common.apply_common_args(a)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in a.shapes.split(",")] if a.shapes else None
    print(run(a.device, a.full, a.dtypes.split(",") if a.dtypes else None, shapes=shapes, out_dir=a.out,
              min_run_time=a.min_run_time))


if __name__ == "__main__":
    main()
