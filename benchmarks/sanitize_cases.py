"""Exercises every CUDA kernel path once on small inputs, for compute-sanitizer
(memcheck, racecheck): warp-per-row and block-per-row softmax, fast and general
(mask/bias) paths, odd alignments, forward and backward, and the mask kernels.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_cases.py
"""
import torch

import maskext


def main():
    dev = "cuda"
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for Tk in (1, 7, 97, 1025, 4099):
            x = torch.randn(3, 2, 5, Tk + 3, device=dev, dtype=dtype)[..., 3:]  # misaligned rows
            L = torch.tensor([0, Tk, Tk // 2 + 1], device=dev)
            QL = torch.tensor([5, 2, 0], device=dev, dtype=torch.int32)
            mask = torch.rand(3, 1, 5, Tk, device=dev) > 0.3
            bias = torch.randn(1, 2, 1, Tk, device=dev, dtype=dtype)
            for kw in (dict(lengths=L), dict(lengths=L, causal=True, q_lengths=QL, window=(4, 1)),
                       dict(mask=mask, bias=bias, lengths=L, scale=0.5), {}):
                xr = x.detach().clone().requires_grad_()
                y = maskext.masked_softmax(xr, **kw)
                y.backward(torch.randn_like(y))
    L = torch.tensor([2**40, 0, 5, 17], device=dev)
    for dtype in (torch.bool, torch.float16, torch.float32, torch.float64):
        maskext.attention_mask(L, q_len=13, k_len=17, q_lengths=L, causal=True, window=(3, None),
                               dtype=dtype)
    for T in (0, 1, 33):
        m = maskext.lengths_to_mask(L, T, left_pad=True)
        maskext.mask_to_lengths(m)
        maskext.lengths_from_padded(torch.randn(4, T, 3, device=dev), 0.0)
    torch.cuda.synchronize()
    print("sanitize_cases: ok")


if __name__ == "__main__":
    main()
