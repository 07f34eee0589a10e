"""Exercises every CUDA kernel path once on small inputs, for compute-sanitizer
(memcheck, racecheck): every register tier of the softmax (tiers A to D,
streamed and not), warp-per-row and block-per-row softmax, fast and general
(mask/bias) paths, odd alignments, forward and backward (and double backward),
NaN and +inf rows, huge window sides, the mask, padding and gate kernels.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_cases.py

`--device cpu` runs the same calls on the CPU (a quick check of this script
where there is no GPU).
"""
import argparse
import itertools
import sys

import torch

import maskext


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    dev = ap.parse_args().device
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for Tk in (1, 7, 97, 1025, 4099):
            x = torch.randn(3, 2, 5, Tk + 3, device=dev, dtype=dtype)[..., 3:]  # misaligned rows
            L = torch.tensor([0, Tk, Tk // 2 + 1], device=dev)
            QL = torch.tensor([5, 2, 0], device=dev, dtype=torch.int32)
            mask = torch.rand(3, 1, 5, Tk, device=dev) > 0.3
            bias = torch.randn(1, 2, 1, Tk, device=dev, dtype=dtype)
            xn = torch.empty(3, 2, 5, Tk + 3, device=dev, dtype=dtype)[..., 3:].copy_(x)
            # A NaN row, an all-NaN row, a +inf row, misaligned as x (the tiers
            # read a poisoned row's x again, out of line).
            xn[1, 0, 0, 0] = float("nan")
            xn[1, 1, 1] = float("nan")
            xn[1, 0, 2, -1] = float("inf")
            for kw in (dict(lengths=L), dict(lengths=L, causal=True, q_lengths=QL, window=(4, 1)),
                       dict(mask=mask, bias=bias, lengths=L, scale=0.5), {},
                       dict(window=(None, sys.maxsize), lengths=L),
                       dict(lengths=L, causal=True, softcap=5.0,
                            sinks=torch.randn(2, 1, device=dev, dtype=dtype))):
                for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
                    xr = x.detach().requires_grad_()
                    y = fn(xr, **kw)
                    y.backward(torch.randn_like(y))
                    fn(xn, **kw)
            # double backward: the backward op on its own grad
            xr = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(maskext.masked_softmax(xr, lengths=L).square().sum(), xr,
                                       create_graph=True)
            g.sum().backward()
    # The register tiers: with the lengths above (1, 7, 97, 1025, 4099), these
    # reach every tier size of fp16 / bf16 and fp32, forward and backward, with
    # rows and dy misaligned (tests/test_softmax.py::_tier tells which tier a
    # length gets): 4 to 32 lanes per row with 1 to 4 chunks each, a warp with
    # 2 to 8 chunks per lane; in 30 rows (fewer than SMs) tier D on sm_90 from
    # 6000 fp32 / 12000 fp16 keys (2, 4 and 8 CTAs per row); in 156 rows (more
    # than SMs) 128 to 512 threads per row, and tier D by length (4 CTAs of 8
    # chunks per thread); in 66 rows of 40000 fp16 keys (20000 fp32), where the
    # GPU holds fewer clusters of 4 CTAs than rows, tier D's CTAs of 512
    # threads in clusters of 2 (launch_tier_d; on the H100 and H200).
    for dtype, rows in itertools.product((torch.float16, torch.bfloat16, torch.float32),
                                         (30, 66, 156)):
        if rows == 30:
            lengths = (20, 40, 100, 200, 300, 600, 2000, 3000, 6000, 12000, 20000)
        elif rows == 66:
            lengths = (20000,) if dtype == torch.float32 else (40000,)
        else:
            lengths = (6000, 12000, 20000) if dtype == torch.float32 else (12000, 30000, 40000)
        for Tk in lengths:
            x = torch.randn(3, 2, rows // 6, Tk + 1, device=dev, dtype=dtype)[..., 1:]
            dy = torch.randn(3, 2, rows // 6, Tk + 1, device=dev, dtype=dtype)[..., 1:]
            L = torch.tensor([0, Tk, Tk // 2 + 1], device=dev)
            QL = torch.tensor([rows // 6, 2, 0], device=dev, dtype=torch.int32)
            for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
                for xx in (x, x.contiguous()):
                    # detach(), not clone(): a clone of the view would be contiguous
                    xr = xx.detach().requires_grad_()
                    fn(xr, lengths=L, causal=True, q_lengths=QL, scale=0.5).backward(dy)
    # The streamed tiers (rows 16-byte aligned, no mask or bias tensor) over
    # more rows than one round of blocks holds: each block takes row after
    # row, copying the next into shared memory (cp.async) while computing this
    # one; a warp of 4-lane groups (tier A), a warp (B), a block (C: its
    # reductions through shared memory, the backward's by row parity); lengths
    # of every value (chunks that [lo, hi) cuts), fully masked rows, a NaN row.
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 1
    for dtype in (torch.float16, torch.float32):
        # rows per SM: 1.4-3 rounds of blocks (on an H100 or H200), the last
        # partial, few enough for racecheck's time budget
        for Tk, per_sm in ((40, 200), (1000, 20), (8192, 3)):
            rows = 2 * sms * per_sm + 3
            x = torch.randn(rows, 1, 1, Tk, device=dev, dtype=dtype)
            x[rows // 2, 0, 0, 1] = float("nan")
            L = torch.randint(0, Tk + 1, (rows,), device=dev)
            sinks = torch.randn(1, device=dev)
            for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
                xr = x.detach().requires_grad_()
                fn(xr, lengths=L, sinks=sinks).backward(torch.randn_like(x))
    # Long rows (Tk > 65536) in few rows (fewer than the GPU has SMs), misaligned:
    # fp16 forward tier D (8 CTAs of 8 chunks) on sm_90, fp32 forward the split
    # kernels (no mask tensor: lengths; softcap and sinks), the backward and
    # the mask and bias path the general kernels.
    for dtype in (torch.float16, torch.float32):
        Tk = 70001
        x = torch.randn(2, 1, 2, Tk + 1, device=dev, dtype=dtype)[..., 1:]
        L = torch.tensor([Tk, Tk // 3], device=dev)
        mask = torch.rand(1, 1, 1, Tk, device=dev) > 0.1
        sinks = torch.randn(1, device=dev)
        for kw in (dict(lengths=L), dict(lengths=L, softcap=3.0, sinks=sinks),
                   dict(lengths=L, mask=mask, bias=x[:1, :, :1].contiguous())):
            for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
                xr = x.detach().requires_grad_()
                fn(xr, **kw).sum().backward()
    L = torch.tensor([2**40, 0, 5, 17], device=dev)
    # k_len 17: the flat mask kernel (chunks cross rows); 64: a warp per row;
    # 1001: a warp per row with an unaligned head and tail (every dtype).
    for dtype in (torch.bool, torch.float16, torch.float32, torch.float64):
        for k_len in (17, 64, 1001):
            maskext.attention_mask(L, q_len=13, k_len=k_len, q_lengths=L, causal=True,
                                   window=(3, None), dtype=dtype)
    # More rows than resident warps: several rows per warp (k_len 16: rows of
    # one chunk spread over the lanes; 512: row after row), and past 32 rows
    # per warp the grid-stride loop.
    for q_len, k_len in ((3001, 16), (3001, 512), (70001, 16)):
        maskext.attention_mask(L, q_len=q_len, k_len=k_len, q_lengths=L, causal=True)
    # Feature sizes 5 (element-wise gate and copies) and 16 (16-byte chunks),
    # in fp32 and fp16, and a misaligned fp16 x; for the pooling also 1 (256
    # slices of the steps), 40 (10 threads of 4 columns) and 264 (three tiles
    # of 32 threads of 4 columns, the last partial); 3000 steps of 8 fp16: the
    # steps of each row split over 2 blocks, then combined.
    for T, F, dtype in ((0, 5, torch.float32), (1, 5, torch.float32), (33, 5, torch.float32),
                        (64, 16, torch.float32), (33, 16, torch.float16), (33, -16, torch.float16),
                        (700, 1, torch.float32), (33, 40, torch.float32),
                        (33, 264, torch.float32), (3000, 8, torch.float16)):
        m = maskext.lengths_to_mask(L, T, left_pad=True)
        maskext.mask_to_lengths(m)
        maskext.lengths_from_padded(torch.randn(4, T, 3, device=dev), 0.0)
        if F > 0:
            z = torch.randn(4, T, F, device=dev, dtype=dtype, requires_grad=True)
        else:  # contiguous, one element past a 16-byte boundary
            z = torch.randn(4 * T * -F + 1, device=dev, dtype=dtype)[1:].view(4, T, -F)
            z.requires_grad_()
        for name in ("sum", "mean", "max"):
            getattr(maskext, f"masked_{name}")(z, L).sum().backward()
        maskext.fill_padding(z, L, 1.0, left_pad=True).sum().backward()
        maskext.fill_padding_(z.detach().clone(), L, 2.0)
        for hard in (False, True):
            (gz,) = torch.autograd.grad(maskext.sigmoid_gate(z, z * 2, L, hard=hard).sum(), z,
                                        create_graph=True)
            gz.sum().backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    print("sanitize_cases: ok")


if __name__ == "__main__":
    main()
