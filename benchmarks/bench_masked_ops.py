"""The other masked ops vs the eager code each replaces (and torch.compile of
it), with a floor measured in the same run:

* fill_padding   vs ``x.masked_fill(pad_mask[..., None], 0)``   floor: copy_
* sigmoid_gate   vs ``x * sigmoid(z / t) * keep[..., None]``   floor: copy_
* masked_mean    vs ``(x * keep[..., None]).sum(1) / lengths``  floor: x.sum(1)
* masked_max     vs ``x.masked_fill(pad, -inf).amax(1)``        floor: x.sum(1)
* masked_log_softmax vs ``x.masked_fill(~keep, -inf).log_softmax(-1)``  floor: copy_

    python benchmarks/bench_masked_ops.py [--device cpu|cuda] [--threads N] [--out DIR]

The eager code builds its mask from the lengths inside the timed call, as a
model does. Lengths are uniform in [T/2, T].
"""
import argparse
import os
import sys

import torch
import torch._dynamo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import maskext  # noqa: E402

PROVIDERS = ["maskext", "eager", "torch.compile", "floor"]
for _name in ("cache_size_limit", "recompile_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 4096)


def _keep(L, T):
    return torch.arange(T, device=L.device)[None, :] < L[:, None]


def eager_fill(x, L):
    return x.masked_fill(~_keep(L, x.shape[1])[..., None], 0.0)


def eager_gate(x, z, L):
    return x * torch.sigmoid(z / 0.5) * _keep(L, x.shape[1])[..., None]


def eager_mean(x, L):
    return (x * _keep(L, x.shape[1])[..., None]).sum(1) / L.clamp(min=1)[:, None]


def eager_max(x, L):
    return x.masked_fill(~_keep(L, x.shape[1])[..., None], float("-inf")).amax(1)


def eager_log_softmax(x, L):
    return x.masked_fill(~_keep(L, x.shape[-1])[:, None, None, :], float("-inf")).log_softmax(-1)


def cases_for(device):
    big = device == "cuda"
    seq = (64, 2048, 1024) if big else (16, 512, 256)     # (B, T, D)
    att = (16, 16, 1024, 1024) if big else (4, 8, 256, 256)
    long_steps = (16, 16384, 8) if big else (8, 4096, 4)  # pooling: few columns, long rows
    return [("fill_padding", seq), ("sigmoid_gate", seq), ("masked_mean", seq),
            ("masked_max", seq), ("masked_log_softmax", att), ("masked_mean", long_steps)]


def build(op, shape, device, dtype):
    x = torch.randn(shape, device=device, dtype=dtype)
    T = shape[1] if op != "masked_log_softmax" else shape[-1]
    L = torch.randint(T // 2, T + 1, (shape[0],), device=device)
    out = torch.empty_like(x)
    copy = lambda: out.copy_(x)
    reduce_floor = lambda: x.sum(1)
    if op == "fill_padding":
        return (lambda: maskext.fill_padding(x, L)), eager_fill, (x, L), copy
    if op == "sigmoid_gate":
        z = torch.randn_like(x)
        return (lambda: maskext.sigmoid_gate(x, z, L, temperature=0.5)), eager_gate, (x, z, L), copy
    if op == "masked_mean":
        return (lambda: maskext.masked_mean(x, L)), eager_mean, (x, L), reduce_floor
    if op == "masked_max":
        return (lambda: maskext.masked_max(x, L)), eager_max, (x, L), reduce_floor
    return (lambda: maskext.masked_log_softmax(x, lengths=L)), eager_log_softmax, (x, L), copy


def run(device="cpu", out_dir=common.OUT_DIR, min_run_time=0.5):
    env = common.env_info(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    plan = cases_for(device)
    bar = common.Progress(len(plan), "masked ops")
    cases = []
    for op, shape in plan:
        bar.step(f"{op} {shape}")
        ours, eager, args, floor = build(op, shape, device, dtype)
        compiled = torch.compile(eager, dynamic=False)
        got, want = ours(), eager(*args)
        if op == "masked_log_softmax":  # masked positions: finfo.min vs -inf
            got, want = got.clamp(min=-1e4), want.clamp(min=-1e4)
        tol = 2e-2 if dtype == torch.float16 else 1e-4
        assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol), f"{op}: eager and maskext differ"
        fns = {"maskext": ours, "eager": lambda: eager(*args), "torch.compile": lambda: compiled(*args),
               "floor": floor}
        nbytes = args[0].numel() * args[0].element_size() * (1 if "mean" in op or "max" in op else 2)
        case = common.Case(op, "x".join(map(str, shape)), str(dtype).replace("torch.", ""),
                           "padded", nbytes)
        for p in PROVIDERS:
            case.times[p] = common.time_ms(fns[p], device, min_run_time)
        cases.append(case)
        # Written after every case, so a run cut short still leaves its results.
        common.write_results(f"masked_ops_{device}", cases, PROVIDERS, "floor", env, out_dir, plot=False)
    return common.write_results(f"masked_ops_{device}", cases, PROVIDERS, "floor", env, out_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_common_args(ap)
    a = ap.parse_args()
    common.apply_common_args(a)
    print(run(a.device, a.out))


if __name__ == "__main__":
    main()
