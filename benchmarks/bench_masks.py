"""Building masks from lengths: maskext vs eager PyTorch vs the floor
(``fill_`` of an output of the same size and dtype, in the same run).

    python benchmarks/bench_masks.py [--device cpu|cuda] [--threads N] [--out DIR]

Eager baselines: ``arange(T) < lengths[:, None]`` for 2-D masks, and the
Hugging Face-style 4-D causal + padding mask (``full`` + ``triu`` +
``masked_fill``) for attention masks.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import maskext  # noqa: E402

PROVIDERS = ["maskext", "eager", "fill_"]


def hf_causal_padding_mask(L, T, dtype):
    """The 4-D additive mask as Hugging Face models build it (0 keep, finfo.min masked)."""
    B, mn = L.shape[0], torch.finfo(dtype).min
    causal = torch.full((T, T), mn, dtype=dtype, device=L.device).triu(1)
    pad = torch.arange(T, device=L.device)[None, :] < L[:, None]
    return causal[None, None].expand(B, 1, T, T).masked_fill(~pad[:, None, None, :], mn)


def bool_causal_padding_mask(L, T):
    pad = torch.arange(T, device=L.device)[None, :] < L[:, None]
    return torch.ones(T, T, dtype=torch.bool, device=L.device).tril()[None, None] & pad[:, None, None, :]


def cases_for(device):
    if device == "cuda":
        return [("lengths_to_mask", (256, 4096), torch.bool), ("lengths_to_mask", (4096, 8192), torch.bool),
                ("attention_mask", (16, 1024), torch.float16), ("attention_mask", (16, 1024), torch.bool),
                ("attention_mask", (4, 4096), torch.bfloat16),
                # rows not a multiple of 16 bytes: the flat kernel (chunks across rows)
                ("attention_mask", (16, 1000), torch.bool)]
    return [("lengths_to_mask", (256, 4096), torch.bool), ("attention_mask", (8, 1024), torch.float32),
            ("attention_mask", (8, 1024), torch.bool)]


def run(device="cpu", out_dir=common.OUT_DIR, min_run_time=0.5):
    env = common.env_info(device)
    plan = cases_for(device)
    bar = common.Progress(len(plan), "masks")
    cases = []
    for op, (B, T), dtype in plan:
        bar.step(f"{op} {B}x{T} {dtype}")
        L = torch.randint(T // 2, T + 1, (B,), device=device)
        if op == "lengths_to_mask":
            fns = {"maskext": lambda: maskext.lengths_to_mask(L, T),
                   "eager": lambda: torch.arange(T, device=device)[None, :] < L[:, None]}
            shape, variant = (B, T), "padding"
        else:
            def ours():
                return maskext.attention_mask(L, q_len=T, k_len=T, causal=True, dtype=dtype)
            eager = (lambda: bool_causal_padding_mask(L, T)) if dtype == torch.bool else \
                (lambda: hf_causal_padding_mask(L, T, dtype))
            fns = {"maskext": ours, "eager": eager}
            shape, variant = (B, 1, T, T), "causal+padding"
        assert torch.equal(fns["maskext"](), fns["eager"]()), f"{op}: eager and maskext differ"
        out = torch.empty(shape, dtype=dtype, device=device)
        fns["fill_"] = lambda: out.fill_(0)
        dname = str(dtype).replace("torch.", "")
        case = common.Case(op, "x".join(map(str, shape)), dname, variant, out.numel() * out.element_size())
        for p in PROVIDERS:
            case.times[p] = common.time_ms(fns[p], device, min_run_time)
        cases.append(case)
    return common.write_results(f"masks_{device}", cases, PROVIDERS, "fill_", env, out_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_common_args(ap)
    a = ap.parse_args()
    common.apply_common_args(a)
    print(run(a.device, a.out))


if __name__ == "__main__":
    main()
