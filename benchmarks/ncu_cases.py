"""A few softmax launches for Nsight Compute, to see why a kernel sits where
it does against the copy: achieved DRAM bandwidth, occupancy, and what its
warps wait on. Then one launch each of mask building and the gate, which
Session 14 found issue-bound in their SASS (RESULTS.md): issue-slot
utilisation against DRAM throughput says whether that holds.

    ncu --clock-control none --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section LaunchStats \\
        -k regex:'softmax|interval_mask|gate_kernel' python benchmarks/ncu_cases.py

The H200 run of 2026-11-26 fitted one rule (benchmarks/RESULTS.md): a row's
time follows the bytes each SM holds in flight, not the bytes it reads, so
padded rows are no faster than full ones. The cases below are the ones that
rule explains, full and padded, so that the counters can confirm or refute it
(long-scoreboard stalls, DRAM throughput well under peak, full occupancy).
Each case is launched twice: the first is a warm-up, ncu profiles both.
`--device cpu` runs the same calls on the CPU (a check of this script).
"""
import argparse
import os

import torch

import maskext

# (B, H, Tq, Tk), dtype, padded, backward, streamed (False: MASKEXT_STREAM=0,
# the register tiers' kernels of a block per row group)
CASES = [
    ((256, 8, 128, 128), torch.float16, False, False, True),
    ((16, 16, 1024, 1024), torch.float16, False, False, True),
    ((16, 16, 1024, 1024), torch.float16, True, False, True),
    ((16, 16, 1024, 1024), torch.float16, True, False, False),
    ((2, 16, 4096, 4096), torch.float16, False, False, True),
    ((16, 16, 1024, 1024), torch.float16, True, True, True),
    ((8, 16, 1, 65536), torch.float16, True, False, True),
    # 2048 rows of 8K keys: the 8-chunk forward tier of 128-thread blocks, and
    # the backward where torch.compile's kernel was 1.22x faster (2026-11-27)
    ((64, 32, 1, 8192), torch.float16, False, True, True),
    ((64, 32, 1, 8192), torch.float16, False, True, False),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    dev = ap.parse_args().device
    for shape, dtype, padded, backward, streamed in CASES:
        if streamed:
            os.environ.pop("MASKEXT_STREAM", None)
        else:
            os.environ["MASKEXT_STREAM"] = "0"
        if dev == "cpu":  # the same calls, small
            shape = shape[:2] + (min(shape[2], 8), min(shape[3], 64))
        B, Tk = shape[0], shape[-1]
        x = torch.randn(shape, device=dev, dtype=dtype)
        L = torch.randint(Tk // 2, Tk + 1, (B,), device=dev) if padded else None
        for _ in range(2):
            if backward:
                y = maskext.masked_softmax(x, lengths=L)
                torch.ops.maskext.masked_softmax_backward(torch.randn_like(y), y, L, None, False,
                                                          -1, -1, 1.0)
            else:
                maskext.masked_softmax(x, lengths=L)
        print(f"ncu_cases: {tuple(shape)} {str(dtype)[6:]} {'padded' if padded else 'full'} "
              f"{'backward' if backward else 'forward'}{'' if streamed else ' MASKEXT_STREAM=0'}",
              flush=True)
    os.environ.pop("MASKEXT_STREAM", None)
    # attention_mask 16x1x1024x1024 bool, causal + padding (1.40x fill_ on the
    # H200), and sigmoid_gate 64x2048x1024 fp16, padded (1.53x its copy)
    B, T = (16, 1024) if dev == "cuda" else (2, 64)
    L = torch.randint(T // 2, T + 1, (B,), device=dev)
    maskext.attention_mask(L, q_len=T, k_len=T, causal=True, dtype=torch.bool)
    print(f"ncu_cases: attention_mask {B}x1x{T}x{T} bool causal+padding", flush=True)
    B, T, F = (64, 2048, 1024) if dev == "cuda" else (2, 16, 64)
    x = torch.randn(B, T, F, device=dev, dtype=torch.float16)
    L = torch.randint(T // 2, T + 1, (B,), device=dev)
    maskext.sigmoid_gate(x, torch.randn_like(x), L, temperature=0.5)
    print(f"ncu_cases: sigmoid_gate {B}x{T}x{F} float16 padded", flush=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    print("ncu_cases: ok")


if __name__ == "__main__":
    main()
