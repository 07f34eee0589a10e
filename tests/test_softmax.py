"""Fused masked softmax (forward and backward) against maskext.reference."""
import functools
import importlib.util
import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

import maskext
from maskext import reference as R

TK = [1, 3, 97, 1000, 1025, 4097]


def rand_lengths(B, T, device, dtype=torch.int64):
    L = torch.randint(0, T + 1, (B,), dtype=dtype)
    if B >= 3:
        L[0], L[1], L[2] = 0, T, T + 3  # zero, full, longer than the row
    return L.to(device)


def check(x, atol=None, **kw):
    got = maskext.masked_softmax(x, **kw)
    want = R.masked_softmax(x, **kw)
    assert got.shape == x.shape and got.dtype == x.dtype and got.is_contiguous()
    assert not got.isnan().any()
    if atol is None and x.dtype == torch.float64:
        atol = 1e-12
    elif atol is None:  # within 2x of what PyTorch's own softmax in x's dtype achieves
        ref = R.masked_softmax(x, compute_dtype=x.dtype, **kw)
        torch_err = (ref.double() - want.double()).abs().max().item() if x.numel() else 0.0
        atol = 2 * torch_err + (2e-6 if x.dtype == torch.float32 else 1e-3)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    return got


@pytest.mark.parametrize("Tk", TK)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lengths_2d_and_4d(device, Tk, dtype):
    x = torch.randn(5, Tk, device=device, dtype=dtype) * 3
    check(x, lengths=rand_lengths(5, Tk, device))
    x = torch.randn(4, 2, 3, Tk, device=device, dtype=dtype) * 3
    check(x, lengths=rand_lengths(4, Tk, device, torch.int32))


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (3, 3), (97, 97), (5, 97), (97, 5), (1, 1025),
                                   (33, 1025)])
def test_every_mask_combination(device, Tq, Tk):
    B = 4
    x = torch.randn(B, 2, Tq, Tk, device=device) * 2
    L, QL = rand_lengths(B, Tk, device), rand_lengths(B, Tq, device, torch.int32)
    masks = [None, torch.rand(B, 1, Tq, Tk, device=device) > 0.3]
    biases = [None, torch.randn(1, 2, 1, Tk, device=device)]
    for lengths, q_lengths, causal, window, mask, bias, scale in itertools.product(
            [None, L], [None, QL], [False, True], [None, (3, 1), (None, 0)], masks, biases,
            [None, 0.3]):
        check(x, mask=mask, lengths=lengths, q_lengths=q_lengths, causal=causal, window=window,
              bias=bias, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Tk", [3, 97, 1000, 4097])
def test_low_precision(device, dtype, Tk):
    x = (torch.randn(3, 2, 5, Tk, device=device) * 4).to(dtype)
    L = rand_lengths(3, Tk, device)
    check(x, lengths=L)
    check(x, lengths=L, causal=True, scale=0.5)
    check(x, lengths=L, bias=torch.randn(5, Tk, device=device).to(dtype),
          mask=torch.rand(3, 1, 1, Tk, device=device) > 0.2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Tk", [5, 97, 1025])
def test_low_precision_backward(device, dtype, Tk):
    x = (torch.randn(3, 2, 4, Tk, device=device) * 3).to(dtype).requires_grad_()
    dy = torch.randn(3, 2, 4, Tk, device=device).to(dtype)
    L = rand_lengths(3, Tk, device)
    mask = torch.rand(3, 1, 4, Tk, device=device) > 0.2
    for fn, own_fn, own_bwd in ((maskext.masked_softmax, torch.softmax, torch._softmax_backward_data),
                                (maskext.masked_log_softmax, torch.log_softmax,
                                 torch._log_softmax_backward_data)):
        kw = dict(lengths=L, causal=True, scale=0.7, mask=mask)
        (got,) = torch.autograd.grad(fn(x, **kw), x, dy)
        x32 = x.detach().float().requires_grad_()
        (want,) = torch.autograd.grad(fn(x32, **kw), x32, dy.float())
        # PyTorch's own backward from a low-precision output, for the tolerance
        y = own_fn(x.detach().float(), -1)
        own = own_bwd(dy, y.to(dtype), -1, dtype).float()
        ref = own_bwd(dy.float(), y, -1, torch.float32)
        atol = 2 * (own - ref).abs().max().item() + 1e-3
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=0.016)


def test_non_contiguous(device):
    base = torch.randn(4, 3, 40, 70, device=device)
    L = rand_lengths(4, 33, device)
    check(base[..., 5:38], lengths=L, causal=True)          # sliced last dim, odd offset
    check(base.transpose(1, 2)[:, :, :, :33], lengths=L)    # permuted middle dims
    check(base[..., ::2], lengths=L)                        # last-dim stride 2
    check(base.transpose(-1, -2)[..., :33, :], lengths=L)   # column-major rows
    Ls = torch.stack([L, L.flip(0)], 1)[:, 1]                # strided lengths and q_lengths
    check(base[..., :33], lengths=Ls, q_lengths=Ls.int(), causal=True)


@pytest.mark.parametrize("mshape", [(33,), (1, 33), (40, 33), (4, 1, 1, 33), (4, 3, 40, 33),
                                    (1, 3, 40, 1), (4, 1, 40, 33)])
def test_broadcast_masks_and_biases(device, mshape):
    x = torch.randn(4, 3, 40, 33, device=device)
    mask = torch.rand(mshape, device=device) > 0.4
    bias = torch.randn(mshape, device=device)
    check(x, mask=mask)
    check(x, bias=bias, lengths=rand_lengths(4, 33, device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_mask_and_bias_layouts(device, dtype):
    # The CUDA mask/bias path loads x, the bias and the mask a 16-byte chunk
    # of the output at a time (8 or 4 bools in one load) where a row is
    # contiguous and aligned as the output, key by key otherwise: aligned,
    # offset by one or three keys, strided and broadcast rows, mixed.
    B, H, Tq, Tk = 3, 2, 5, 203
    base = torch.randn(B, H, Tq, Tk + 5, device=device).to(dtype) * 3
    xs = [base[..., :Tk], base[..., 3:Tk + 3]]
    mt = torch.rand(B, 1, Tk, Tq, device=device) > 0.3
    mo = torch.rand(B, 1, Tq, Tk + 1, device=device) > 0.3
    masks = [None, mt.transpose(-1, -2), mo[..., 1:], mo[..., :Tk], mo[:, :, :1, 1:]]
    bo = torch.randn(1, H, Tq, Tk + 2, device=device).to(dtype)
    bs = torch.randn(Tq, 2 * Tk, device=device).to(dtype)
    biases = [None, bo[..., :Tk], bo[..., 1:Tk + 1], bs[:, ::2]]
    L = torch.tensor([Tk, 150, 7], device=device)
    for x in xs:
        for mask in masks:
            for bias in biases:
                if mask is not None or bias is not None:
                    check(x, mask=mask, bias=bias, lengths=L)


def test_bias_masks_with_min_and_inf(device):
    x = torch.randn(2, 3, 7, device=device)
    bias = torch.zeros(2, 3, 7, device=device)
    bias[0, :, 2:] = float("-inf")
    bias[1, :, :4] = torch.finfo(torch.float32).min
    bias[1, 2, :] = torch.finfo(torch.float32).min  # a fully masked row
    y = check(x, bias=bias)
    assert (y[0, :, 2:] == 0).all() and (y[1, :, :4] == 0).all() and (y[1, 2] == 0).all()


def test_fully_masked_rows_are_zero_with_zero_grad(device):
    x = torch.randn(3, 2, 4, 6, device=device, requires_grad=True)
    L = torch.tensor([0, 6, 2], device=device)
    QL = torch.tensor([4, 1, 0], device=device)
    mask = torch.ones(3, 2, 4, 6, dtype=torch.bool, device=device)
    mask[1, 1, 0] = False
    y = maskext.masked_softmax(x, mask, lengths=L, q_lengths=QL)
    assert (y[0] == 0).all() and (y[1, :, 1:] == 0).all() and (y[2] == 0).all()
    assert (y[1, 1, 0] == 0).all()
    torch.testing.assert_close(y[1, 0, 0].sum(), torch.tensor(1.0, device=device))
    y.backward(torch.randn_like(y))
    assert not x.grad.isnan().any()
    assert (x.grad[0] == 0).all() and (x.grad[2] == 0).all() and (x.grad[1, 1, 0] == 0).all()


def test_empty(device):
    for shape in [(0, 5), (3, 0), (2, 0, 4, 4), (2, 3, 0, 7), (2, 3, 4, 0)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        L = torch.zeros(shape[0], dtype=torch.int64, device=device)
        y = maskext.masked_softmax(x, lengths=L)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_five_dims(device):
    x = torch.randn(2, 3, 2, 5, 9, device=device)
    check(x, lengths=torch.tensor([4, 9], device=device), causal=True,
          mask=torch.rand(2, 1, 2, 1, 9, device=device) > 0.3)


def test_very_long_rows(device):
    Tk = 70001
    x = torch.randn(2, 1, 2, Tk, device=device) * 5
    check(x, lengths=torch.tensor([Tk, 65537], device=device), window=(None, 40000))


def test_extreme_scores(device):
    x = torch.tensor([[1e30, -1e30, 0.0, 5.0], [-1e30, -1e30, -1e30, -1e30]], device=device)
    check(x, lengths=torch.tensor([3, 4], device=device))
    x = torch.full((2, 5), float("-inf"), device=device)
    x[0, 1] = 0.0
    y = maskext.masked_softmax(x)  # -inf scores are masked positions; an all -inf row is 0
    assert y[0].tolist() == [0, 1, 0, 0, 0] and (y[1] == 0).all()


# ---------------------------------------------------------------- gradients

def test_gradcheck(device):
    B, H, Tq, Tk = 3, 2, 4, 6
    x = torch.randn(B, H, Tq, Tk, device=device, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, H, Tq, Tk, device=device, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, 1, 1, Tk, device=device) > 0.2
    L = torch.tensor([6, 3, 0], device=device)
    QL = torch.tensor([4, 2, 3], device=device)
    f = lambda x, bias: maskext.masked_softmax(x, mask, lengths=L, q_lengths=QL, causal=True,
                                               window=(2, None), scale=0.7, bias=bias)
    assert torch.autograd.gradcheck(f, (x, bias))
    g = lambda x: maskext.masked_softmax(x, lengths=L, scale=1.3)
    assert torch.autograd.gradcheck(g, (x,))


@pytest.mark.parametrize("Tk", [5, 1000, 1025])
def test_backward_matches_reference(device, Tk):
    x = torch.randn(3, 2, 6, Tk, device=device, requires_grad=True)
    bias = torch.randn(6, Tk, device=device, requires_grad=True)
    kw = dict(lengths=rand_lengths(3, Tk, device), causal=True, scale=0.5)
    dy = torch.randn(3, 2, 6, Tk, device=device)
    gx, gb = torch.autograd.grad(maskext.masked_softmax(x, bias=bias, **kw), (x, bias), dy)
    rx, rb = torch.autograd.grad(R.masked_softmax(x, bias=bias, compute_dtype=torch.float32, **kw),
                                 (x, bias), dy)
    torch.testing.assert_close(gx, rx, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gb, rb, atol=1e-5, rtol=1e-4)
    # non-contiguous grad_out
    dyt = torch.randn(3, 2, Tk, 6, device=device).transpose(-1, -2)
    gx = torch.autograd.grad(maskext.masked_softmax(x, **kw), x, dyt)[0]
    rx = torch.autograd.grad(R.masked_softmax(x, compute_dtype=torch.float32, **kw), x, dyt)[0]
    torch.testing.assert_close(gx, rx, atol=1e-5, rtol=1e-4)


class Attention(torch.nn.Module):
    """A small multi-head attention layer, written the usual way or with maskext."""

    def __init__(self, dim, heads, use_maskext):
        super().__init__()
        self.heads, self.use_maskext = heads, use_maskext
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, lengths):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2)
        scale = 1 / math.sqrt(D // self.heads)
        if self.use_maskext:
            p = maskext.masked_softmax(scores, lengths=lengths, causal=True, scale=scale)
        else:
            keep = (torch.arange(T, device=x.device) < lengths[:, None])[:, None, None, :]
            keep = keep & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            p = (scores * scale).masked_fill(~keep, float("-inf")).softmax(-1)
        return self.proj((p @ v).transpose(1, 2).reshape(B, T, D))


def test_drop_in_attention_layer(device):
    B, T, D = 4, 13, 16
    ref = Attention(D, 4, use_maskext=False).to(device)
    ours = Attention(D, 4, use_maskext=True).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, D, device=device)
    L = torch.tensor([13, 1, 7, 10], device=device)  # every query row has a real key (causal)
    real = (torch.arange(T, device=device) < L[:, None])[..., None]
    y_ref, y = ref(x, L), ours(x, L)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    ((y_ref * real) ** 2).sum().backward()
    ((y * real) ** 2).sum().backward()
    for (n, p_ref), p in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_module(device):
    sm = maskext.nn.MaskedSoftmax(causal=True, window=(3, 0), scale=0.5)
    x = torch.randn(2, 4, 9, 9, device=device)
    L = torch.tensor([9, 5], device=device)
    torch.testing.assert_close(sm(x, lengths=L),
                               maskext.masked_softmax(x, lengths=L, causal=True, window=(3, 0),
                                                      scale=0.5))
    assert "causal=True" in repr(sm)


# ---------------------------------------------------------------- errors

def test_errors(device):
    x = torch.randn(4, 2, 3, 5, device=device)
    with pytest.raises(RuntimeError, match=r"masked_softmax: lengths must have shape \[B\] with B = x.size\(0\) = 4, got \[3\]"):
        maskext.masked_softmax(x, lengths=torch.tensor([1, 2, 3], device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: lengths must be an integer tensor \(int32 or int64\), got Float"):
        maskext.masked_softmax(x, lengths=torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: mask of shape \[2, 5\] does not broadcast to x of shape \[4, 2, 3, 5\]"):
        maskext.masked_softmax(x, torch.ones(2, 5, dtype=torch.bool, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: mask must be a bool tensor \(True = keep\), got Float"):
        maskext.masked_softmax(x, torch.ones(5, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: bias must have x's dtype Float, got Double"):
        maskext.masked_softmax(x, bias=torch.ones(5, dtype=torch.float64, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: bias of shape \[4\] does not broadcast"):
        maskext.masked_softmax(x, bias=torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: causal, window, q_lengths, q_offset, segment_ids, chunk and prefix_lengths need a query dim, \(B, \.\.\., Tq, Tk\); got a 2-D x of shape \[4, 5\]"):
        maskext.masked_softmax(x[:, 0, 0], causal=True)
    with pytest.raises(RuntimeError, match=r"masked_softmax: x must be float16, bfloat16, float32 or float64, got Long"):
        maskext.masked_softmax(x.long())
    with pytest.raises(ValueError, match=r"masked_softmax: window right must be an int >= 0 or None"):
        maskext.masked_softmax(x, window=(1, -2))
    if device == "cpu":
        with pytest.raises(RuntimeError, match=r"masked_softmax: lengths must be >= 0, got a value of -1"):
            maskext.masked_softmax(x, lengths=torch.tensor([1, -1, 2, 3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_error_lengths_on_wrong_device():
    x = torch.randn(2, 3, device="cuda")
    with pytest.raises(RuntimeError, match=r"masked_softmax: lengths must be on the same device as x \(cuda:0\), got cpu"):
        maskext.masked_softmax(x, lengths=torch.tensor([1, 2]))


# ---------------------------------------------------------------- opcheck / compile

def test_opcheck(device):
    ops = torch.ops.maskext
    x = torch.randn(3, 2, 5, 7, device=device, requires_grad=True)
    L = torch.tensor([7, 0, 3], device=device)
    QL = torch.tensor([5, 2, 1], device=device, dtype=torch.int32)
    mask = torch.rand(3, 1, 5, 7, device=device) > 0.3
    bias = torch.randn(1, 2, 1, 7, device=device, requires_grad=True)
    torch.library.opcheck(ops.masked_softmax, (x, mask, bias, L, QL, True, 2, -1, 0.5))
    torch.library.opcheck(ops.masked_softmax, (x, None, None, L, None, False, -1, -1, 1.0))
    y = maskext.masked_softmax(x.detach(), lengths=L)
    torch.library.opcheck(ops.masked_softmax_backward,
                          (torch.randn_like(y), y, L, QL, True, 2, -1, 0.5))


def test_compile_fullgraph_forward_backward(device):
    def f(x, bias, L):
        return maskext.masked_softmax(x, lengths=L, causal=True, scale=0.5, bias=bias) * 2

    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    bias = torch.randn(6, 6, device=device, requires_grad=True)
    L = torch.tensor([6, 4], device=device)
    dy = torch.randn(2, 3, 6, 6, device=device)
    y = torch.compile(f, fullgraph=True)(x, bias, L)
    gx, gb = torch.autograd.grad(y, (x, bias), dy)
    y2 = f(x, bias, L)
    rx, rb = torch.autograd.grad(y2, (x, bias), dy)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gb, rb)


# ---------------------------------------------------------------- masked_log_softmax

@pytest.mark.parametrize("Tk", [1, 97, 1025])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_log_softmax(device, Tk, dtype):
    x = (torch.randn(3, 2, 4, Tk, device=device) * 3).to(dtype)
    L = rand_lengths(3, Tk, device)
    mask = torch.rand(3, 1, 4, Tk, device=device) > 0.3
    lowest = torch.finfo(dtype).min
    for kw in (dict(lengths=L), dict(lengths=L, causal=True, scale=0.5, mask=mask),
               dict(q_lengths=torch.tensor([4, 1, 0], device=device), window=(2, 2))):
        got = maskext.masked_log_softmax(x, **kw)
        want = R.masked_log_softmax(x, **kw)
        assert torch.isfinite(got).all()
        visible = R.masked_softmax(x.double(), **kw) > 0
        assert (got[~visible] == lowest).all()  # masked and fully masked: finfo.min
        atol = 1e-10 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 0.06)
        torch.testing.assert_close(got[visible], want[visible], atol=atol, rtol=1e-2)
        # exp of the log-softmax is the softmax, masked positions exactly 0
        torch.testing.assert_close(got.double().exp(), maskext.masked_softmax(x, **kw).double(),
                                   atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


def test_log_softmax_gradcheck(device):
    x = torch.randn(3, 2, 4, 6, device=device, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, 6, device=device, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 1, 4, 6, device=device) > 0.3
    L = torch.tensor([6, 0, 3], device=device)
    f = lambda x, b: maskext.masked_log_softmax(x, mask, lengths=L, causal=True, scale=0.7, bias=b)
    assert torch.autograd.gradcheck(f, (x, bias))


def test_log_softmax_nll_loss_with_padding(device):
    """Loss code: NLL over real positions, with padded targets ignored, and
    label smoothing summing over every position: finite, with finite gradients."""
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, device=device, requires_grad=True)
    vocab_len = torch.tensor([V, 7, 4], device=device)  # per-batch valid classes
    logp = maskext.masked_log_softmax(logits, lengths=vocab_len)
    target = torch.randint(0, 4, (B, T), device=device)
    nll = F.nll_loss(logp.transpose(1, 2), target)
    smooth = -(logp * (logp > torch.finfo(logp.dtype).min)).mean()  # 0 * min stays finite
    (nll + smooth).backward()
    assert torch.isfinite(nll) and torch.isfinite(smooth) and torch.isfinite(logits.grad).all()
    ref = torch.log_softmax(logits.detach()[:, :, :4][2], -1)
    torch.testing.assert_close(logp.detach()[2, :, :4], ref)


def test_log_softmax_opcheck(device):
    ops = torch.ops.maskext
    x = torch.randn(3, 2, 5, 7, device=device, requires_grad=True)
    L = torch.tensor([7, 0, 3], device=device)
    mask = torch.rand(3, 1, 5, 7, device=device) > 0.3
    torch.library.opcheck(ops.masked_log_softmax, (x, mask, None, L, None, True, -1, -1, 0.5))
    y = maskext.masked_log_softmax(x.detach(), lengths=L)
    torch.library.opcheck(ops.masked_log_softmax_backward,
                          (torch.randn_like(y), y, L, None, False, -1, -1, 1.0))
    f = lambda x: maskext.masked_log_softmax(x, lengths=L, causal=True)
    got = torch.compile(f, fullgraph=True)(x)
    torch.testing.assert_close(got, f(x))


# ---------------------------------------------------------------- CUDA register tiers

@functools.lru_cache(maxsize=None)
def _cluster_sms():
    """The SMs of the GPU when it runs tier D (thread-block clusters: sm_90 or
    later, and the tests' build is for the visible GPU), else None."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return None
    return torch.cuda.get_device_properties(0).multi_processor_count


def _cluster(need, rows, max_p, block_max):
    """Tier D's ("D", CTAs per row, chunks per thread) for `rows` rows of `need`
    16-byte chunks, None where it does not apply; mirrors cluster_plan (whose
    forward plans launch_tier_d may run on half as many CTAs of twice the
    threads, by the GPU's occupancy)."""
    sms = _cluster_sms()
    if sms is None or need <= 1024 or need > 8 * 256 * max_p or (need <= block_max and rows >= sms):
        return None
    C = 1
    while C * 256 * max_p < need:
        C *= 2
    while C < 8 and rows * C < sms and need > C * 256 * 2:
        C *= 2
    P = 2
    while C * 256 * P < need:
        P *= 2
    return "D", C, P


def _tier(Tk, dtype, backward, general=False, rows=30):
    """The register tier, (threads per row, 16-byte chunks per thread), that
    csrc/cuda/softmax_kernels.cuh picks for `rows` rows of Tk keys (general:
    with a mask or bias tensor), tier D as ("D", CTAs, chunks per thread), None
    for the general and split kernels; mirrors tier_chunks, cluster_plan,
    with_forward_tier and with_tier there."""
    vec = 128 // torch.finfo(dtype).bits  # elements in 16 bytes
    need = Tk // vec if Tk % vec == 0 else (Tk + 2 * vec - 2) // vec
    max_p = 8 if vec == 4 else 4  # the backward's: y and dy, half the forward's chunks
    if backward:  # launch_tier_d<T, LOG, true>; block_max: kTierMaxChunks
        cluster = _cluster(need, rows, max_p, 512 * max_p)
    else:
        cluster = None if general else _cluster(need, rows, 8, 4096)
    if cluster:
        return cluster
    if not backward:  # with_forward_tier<MAXP>: 16 for fp32 without mask or bias, else 8
        tiers = [(4, 1), (4, 2), (4, 4), (8, 4), (16, 4), (32, 4), (32, 8), (128, 4), (128, 8)]
        tiers += [(128, 16), (256, 16)] if vec == 4 and not general else [(256, 8), (512, 8)]
        if general:  # kGeneralTierMaxChunks
            tiers = [(g, p) for g, p in tiers if g * p <= 2048]
    else:  # with_tier<MAXP>, MAXP = 8 for fp32, 4 for fp16 / bf16
        tiers = [(4, 1), (4, 2), (4, 4), (8, 4), (16, 4), (32, 4), (32, 8), (128, max_p),
                 (256, max_p), (512, max_p)]
        tiers = [(g, p) for g, p in tiers if p <= max_p]
    for g, p in tiers:
        if need <= g * p:
            return g, p
    return None


def tier_edges(dtype, backward, general=False, rows=30, start=1):
    """Every Tk >= start where the kernel choice for `rows` rows changes and the
    one after it (a tier's longest row, the next tier's or the general
    kernels' shortest), and short rows."""
    edges = {Tk for Tk in (1, 2, 3, 8, 9) if Tk >= start}
    for Tk in range(start, 132000):
        if _tier(Tk, dtype, backward, general, rows) != _tier(Tk + 1, dtype, backward, general,
                                                              rows):
            edges |= {Tk, Tk + 1}
    return sorted(edges)


_LOW = [torch.float16, torch.bfloat16, torch.float32]
_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _tier_inputs(Tk, dtype):
    """Scores whose rows start aligned, misaligned (x[..., 1:]) and with a row
    stride that is no multiple of 16 bytes; lengths 0, 1, Tk and one between;
    mask kinds, scales, softcap and sinks."""
    base = torch.randn(3, 2, 5, Tk + 1, device="cuda").mul(3).to(dtype)
    xs = [torch.randn(3, 2, 5, Tk, device="cuda").mul(3).to(dtype), base[..., 1:], base[..., :Tk]]
    L = torch.tensor([0, Tk, int(torch.randint(1, Tk + 1, ()))], device="cuda")
    L1 = torch.tensor([1, Tk, 1], device="cuda", dtype=torch.int32)
    QL = torch.tensor([5, 2, 0], device="cuda")
    sinks = torch.randn(2, 1, device="cuda") * 3  # per head
    kws = [{}, dict(lengths=L), dict(lengths=L1, scale=0.3),
           dict(lengths=L, causal=True, q_lengths=QL, sinks=sinks),
           dict(window=(3, 1), scale=-0.5), dict(lengths=L, softcap=2.0, sinks=torch.randn(3, 2, 5, device="cuda"))]
    return xs, kws


def _check_softmax_and_log(x, **kw):
    """masked_softmax and masked_log_softmax of x against the reference; the
    log-softmax's masked positions exactly finfo.min."""
    check(x, **kw)
    got, want = maskext.masked_log_softmax(x, **kw), R.masked_log_softmax(x, **kw)
    visible = R.masked_softmax(x.double(), **kw) > 0
    assert (got[~visible] == torch.finfo(x.dtype).min).all(), (x.shape, kw)
    atol = 1e-5 if x.dtype == torch.float32 else 0.06
    torch.testing.assert_close(got[visible], want[visible], atol=atol, rtol=1e-2)


def _check_forward_inputs(Tk, dtype):
    """_check_softmax_and_log on every input of _tier_inputs(Tk); returns those inputs."""
    xs, kws = _tier_inputs(Tk, dtype)
    for x, kw in itertools.product(xs, kws):
        _check_softmax_and_log(x, **kw)
    return xs


def _check_grads(x, dy, **kw):
    """The gradients of masked_softmax and masked_log_softmax against the
    reference's (fp32); exactly 0 at masked positions."""
    for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
        xg = x.detach().requires_grad_()
        (got,) = torch.autograd.grad(fn(xg, **kw), xg, dy)
        x32 = x.detach().float().requires_grad_()
        ref = R.masked_softmax if fn is maskext.masked_softmax else R.masked_log_softmax
        (want,) = torch.autograd.grad(ref(x32, compute_dtype=torch.float32, **kw), x32,
                                      dy.float())
        atol = 1e-5 if x.dtype == torch.float32 else 0.05
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=0.016)
        visible = R.masked_softmax(x.double(), **kw) > 0
        assert (got[~visible] == 0).all(), (x.shape, kw)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
def test_cuda_tier_forward(dtype):
    for Tk in tier_edges(dtype, backward=False):
        _check_forward_inputs(Tk, dtype)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
def test_cuda_tier_forward_mask_and_bias(dtype):
    """The tiers with a mask and / or bias tensor (contiguous keys), at every
    tier edge and the first row past them (the general kernels): x, mask and
    bias rows aligned as the output or not (views offset by one key, a
    broadcast mask), finfo.min and -inf in the bias, rows that the mask hides
    entirely, with lengths, causal, softcap and sinks; softmax and log-softmax."""
    for Tk in tier_edges(dtype, backward=False, general=True):
        xo = torch.randn(3, 2, 5, Tk + 1, device="cuda").mul(3).to(dtype)
        mo = torch.rand(3, 2, 5, Tk + 1, device="cuda") > 0.3
        mo[1, 0, 2] = False  # a row that the mask hides
        bo = torch.randn(2, 5, Tk + 1, device="cuda").to(dtype)
        bo[0, 1, ::3] = torch.finfo(dtype).min
        bo[1, 3, 1::4] = float("-inf")
        L = torch.tensor([Tk, int(torch.randint(1, Tk + 1, ())), 0], device="cuda")
        sinks = torch.randn(2, 1, device="cuda")
        kws = [dict(mask=mo[..., :Tk]), dict(mask=mo[..., 1:], lengths=L),
               dict(mask=mo[:, :1, :1, :Tk], bias=bo[..., 1:], causal=True, sinks=sinks),
               dict(bias=bo[..., :Tk], softcap=2.0, scale=0.5),
               dict(mask=mo[..., 1:], bias=bo[..., :Tk], lengths=L, sinks=sinks)]
        for x, kw in itertools.product([xo[..., :Tk], xo[..., 1:]], kws):  # x aligned or not
            _check_softmax_and_log(x, **kw)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
def test_cuda_tier_active_slots(dtype):
    """Rows of every length in one launch, at each backward block tier's
    longest row: the backward tiers run only the chunk slots that hold
    visible keys (with_active_slots: 1-4 bodies per kernel, for groups
    narrower than a warp the warp's largest count), so every count, rows of
    different counts in one warp, x aligned and not; softmax and log-softmax
    forward too."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = max(160, sms)  # the block tiers, not tier D
    longest = {}  # backward block tier -> its longest row
    for Tk in tier_edges(dtype, backward=True, rows=rows):
        tier = _tier(Tk, dtype, backward=True, rows=rows)
        if tier is not None and tier[0] != "D":
            longest[tier] = Tk
    assert len(longest) >= 9, longest
    for Tk in longest.values():
        L = torch.linspace(0, Tk, rows, device="cuda").round().long()
        L = L[torch.randperm(rows, device="cuda")]  # neighbours in a warp differ
        base = torch.randn(rows, 1, 1, Tk + 1, device="cuda").mul(3).to(dtype)
        for x in (base[..., 1:], base[..., :Tk]):
            _check_softmax_and_log(x, lengths=L)
            _check_grads(x, torch.randn_like(x), lengths=L)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
@pytest.mark.parametrize("fill", [1, 2])  # rows >= SMs / fill
def test_cuda_tier_forward_many_rows(dtype, fill):
    """As many rows as SMs (or half), rows of more than 1024 chunks: the block
    tiers up to their longest rows (with fewer rows than SMs, tier D takes
    them), then tier D by row length (4 and 8 CTAs of 8 chunks per thread,
    or half as many CTAs of 512 threads where the GPU then holds the rows in
    fewer rounds of clusters; 2 CTAs of 4 and 8 chunks for half as many rows),
    then the split rows; x
    aligned and not, lengths 0, 1, Tk and between, causal with sinks. The
    backward likewise (its tier D holds rows of 64K keys)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    Tq = -(-sms // (3 * fill))  # 3 x Tq rows >= SMs / fill
    vec = 128 // torch.finfo(dtype).bits
    for Tk in tier_edges(dtype, backward=False, rows=3 * Tq, start=1024 * vec - 1):
        base = torch.randn(3, 1, Tq, Tk + 1, device="cuda").mul(3).to(dtype)
        L = torch.tensor([Tk, int(torch.randint(1, Tk + 1, ())), 0], device="cuda")
        QL = torch.tensor([Tq, 1, Tq], device="cuda")
        kws = [{}, dict(lengths=L), dict(lengths=L, causal=True, q_lengths=QL,
                                         sinks=torch.randn(1, 1, device="cuda") * 3)]
        for x, kw in itertools.product([base[..., 1:], base[..., :Tk]], kws):
            _check_softmax_and_log(x, **kw)
    for Tk in tier_edges(dtype, backward=True, rows=3 * Tq, start=1024 * vec - 1):
        x = torch.randn(3, 1, Tq, Tk, device="cuda").mul(3).to(dtype)
        L = torch.tensor([Tk, int(torch.randint(1, Tk + 1, ())), 0], device="cuda")
        dy = torch.randn(3, 1, Tq, Tk + 1, device="cuda").to(dtype)[..., 1:]  # misaligned
        for kw in ({}, dict(lengths=L, causal=True)):
            _check_grads(x, dy, **kw)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
@pytest.mark.parametrize("backward", [False, True])
def test_cuda_streamed_tiers_many_rows(dtype, backward, monkeypatch):
    """More rows than one round of blocks holds, at each block tier's longest
    row: the streamed tiers' blocks take row group after row group, copying
    the next group's rows into shared memory (cp.async) while computing this
    one's. The same as the tier kernels, a block per row group loading
    straight into registers (MASKEXT_STREAM=0), to a rounding: softmax and
    log-softmax, forward or forward and backward; lengths of every value
    (chunks that [lo, hi) cuts), fully masked rows, a NaN row, causal rows
    with sinks, causal rows in segments (left padding); and the reference on
    the first and last rows."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    longest = {}  # block tier -> its longest row
    for Tk in tier_edges(dtype, backward, rows=10**6):
        tier = _tier(Tk, dtype, backward, rows=10**6)
        if tier is not None and tier[0] != "D":
            longest[tier] = Tk
    assert len(longest) >= 9, longest
    for (g, _), Tk in longest.items():
        Tq = 4
        B = -(-3 * sms * (2048 // g) // Tq)  # 3x the rows an SM's 2048 threads hold at once
        x = torch.randn(B, 1, Tq, Tk, device="cuda").mul(3).to(dtype)
        L = torch.randint(0, Tk + 1, (B,), device="cuda")
        L[:2] = torch.tensor([0, Tk])
        L[B // 2] = Tk
        x[B // 2, 0, 2, Tk // 2] = float("nan")  # that row's outputs all NaN
        dy = torch.randn_like(x)
        # left padding as Hugging Face's backend gives it: segment ids 0 then 1
        # (binary searches in each row's bounds); row B // 2 all real
        start = torch.randint(0, Tk + 1, (B, 1), device="cuda")
        start[B // 2] = 0
        seg = (torch.arange(Tk, device="cuda") >= start).long()
        kws = (dict(lengths=L), dict(lengths=L, causal=True, scale=0.7,
                                     sinks=torch.randn(1, 1, device="cuda")),
               dict(segment_ids=seg, causal=True))
        for fn, kw in itertools.product((maskext.masked_softmax, maskext.masked_log_softmax), kws):
            outs = []
            for stream in (True, False):
                if stream:
                    monkeypatch.delenv("MASKEXT_STREAM", raising=False)
                else:
                    monkeypatch.setenv("MASKEXT_STREAM", "0")
                xg = x.detach().requires_grad_(backward)
                y = fn(xg, **kw)
                outs.append((y, torch.autograd.grad(y, xg, dy)[0]) if backward else (y,))
            eps = torch.finfo(dtype).eps  # the same math: at most a rounding apart
            for got, want in zip(*outs):
                torch.testing.assert_close(got, want, rtol=2 * eps, atol=1e-6, equal_nan=True)
            y = outs[0][0]
            assert y[B // 2, 0, 2].isnan().sum() >= (Tk - Tq if "causal" in kw else Tk)
            assert y[B // 2, 0, :2].isfinite().all() and y[B // 2 + 1:].isfinite().all()
        monkeypatch.delenv("MASKEXT_STREAM", raising=False)
        for rows in (slice(0, 8), slice(B - 8, B)):  # the first and the last row groups
            for kw in kws:
                kw = {k: (v[rows] if k in ("lengths", "segment_ids") else v) for k, v in kw.items()}
                if backward:
                    _check_grads(x[rows], dy[rows], **kw)
                else:
                    _check_softmax_and_log(x[rows], **kw)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
def test_cuda_split_rows(dtype):
    """Rows longer than the tiers (tier D included) and fewer than two per SM:
    the split kernels (launch_split_forward), each row over several blocks.
    The same inputs as the tiers' (misaligned rows, lengths 0, every kind,
    softcap, sinks), the NaN rule, and a fully masked batch element."""
    vec = 128 // torch.finfo(dtype).bits
    longest = 16384 * vec if _cluster_sms() else 4096 * vec  # tier D's or tier C's
    for Tk in (longest + 1, 2 * longest + 37):
        assert _tier(Tk, dtype, backward=False) is None
        x = _check_forward_inputs(Tk, dtype)[0].clone()
        x[0, 0, 0, Tk // 2] = float("nan")  # one NaN in one segment: its row all NaN
        x[1, 1, 2, 5] = float("inf")
        L = torch.tensor([Tk, Tk, 0], device="cuda")
        y = maskext.masked_softmax(x, lengths=L)
        assert y[0, 0, 0].isnan().all() and y[1, 1, 2].isnan().all()
        assert not y[0, 0, 1:].isnan().any() and (y[2] == 0).all()
        torch.testing.assert_close(y[0, 1:], R.masked_softmax(x[0, 1:]).to(dtype), atol=1e-3,
                                   rtol=0)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
def test_cuda_tier_backward(dtype):
    for Tk in tier_edges(dtype, backward=True):
        xs, kws = _tier_inputs(Tk, dtype)
        dys = [torch.randn(3, 2, 5, Tk, device="cuda").to(dtype),
               torch.randn(3, 2, 5, Tk + 1, device="cuda").to(dtype)[..., 1:]]  # misaligned dy
        for i, (x, kw) in enumerate(itertools.product(xs, kws[:4])):
            _check_grads(x, dys[i % 2], **kw)


@_CUDA
@pytest.mark.parametrize("dtype", _LOW)
# tier A, tier B (1 chunk, 8+), tier C (4 and 8 chunks per thread), tier D (24
# rows: 8 CTAs of 2 or 4 chunks per thread)
@pytest.mark.parametrize("Tk", [6, 100, 1000, 2000, 5000, 20000])
def test_cuda_tier_nan_and_inf(dtype, Tk):
    """The NaN rule in the register tiers: a NaN or +inf visible score (or sink)
    makes the row's visible outputs NaN except at -inf scores (masked positions),
    which the tier re-reads (out of line: store_poisoned_row, with x's
    alignment, scale and softcap, under which -inf is a finite score); an all
    -inf row is fully masked."""
    x = torch.randn(2, 3, 4, Tk, device="cuda").to(dtype)
    x[0, 0, 0, 1] = float("nan")
    x[0, 0, 0, 2] = float("-inf")
    x[0, 1, 1, 0] = float("inf")
    x[0, 1, 1, 3 % Tk] = float("-inf")
    x[1, 2, 3] = float("-inf")
    x[1, 0, 0, :Tk // 2] = float("-inf")
    L = torch.tensor([Tk, Tk - 1], device="cuda")
    sinks = torch.randn(2, 3, 4, device="cuda")
    sinks[1, 1, 1] = float("nan")
    sinks[1, 2, 2] = float("inf")
    sinks[1, 2, 3] = float("-inf")
    shifted = torch.empty(2, 3, 4, Tk + 1, device="cuda", dtype=dtype)[..., 1:].copy_(x)
    for fn, ref in ((maskext.masked_softmax, R.masked_softmax),
                    (maskext.masked_log_softmax, R.masked_log_softmax)):
        kws = (dict(lengths=L), dict(lengths=L, sinks=sinks),
               dict(lengths=L, scale=0.5, softcap=3.0))
        for xv, kw in itertools.product((x, shifted), kws):
            got, want = fn(xv, **kw), ref(xv, **kw)
            atol = 1e-5 if dtype == torch.float32 else 0.06
            torch.testing.assert_close(got.float(), want.float(), equal_nan=True, atol=atol,
                                       rtol=1e-2)


# ---------------------------------------------------------------- call paths

def test_unboxed_call_path_equals_torch_ops(device):
    # No gradient needed and plain tensors: maskext calls the op's unboxed
    # entry point (csrc/maskext.cpp); it must give what torch.ops gives.
    x = torch.randn(3, 2, 5, 9, device=device)
    L = torch.tensor([0, 9, 4], device=device)
    sinks = torch.randn(2, 1, device=device)
    got = maskext.masked_softmax(x, lengths=L, causal=True, scale=0.5, sinks=sinks)
    want = torch.ops.maskext.masked_softmax(x, None, None, L, None, True, -1, -1, 0.5,
                                            sinks=sinks)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = maskext.masked_log_softmax(x, lengths=L, window=(2, 1))
    want = torch.ops.maskext.masked_log_softmax(x, None, None, L, None, False, 2, 1, 1.0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_modes_and_fake_tensors_still_see_the_op():
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch._subclasses.fake_tensor import FakeTensorMode

    seen = []

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(("function", str(func)))
            return func(*args, **(kwargs or {}))

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(("dispatch", str(func)))
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 4, 6)
    L = torch.tensor([2, 6])
    with Functions():
        maskext.masked_softmax(x, lengths=L)
    with Dispatch():
        maskext.masked_softmax(x, lengths=L)
    assert ("function", "maskext.masked_softmax") in seen, seen
    assert ("dispatch", "maskext.masked_softmax.default") in seen, seen
    with FakeTensorMode() as mode:
        y = maskext.masked_softmax(mode.from_tensor(x), lengths=mode.from_tensor(L))
        assert y.shape == x.shape and type(y).__name__ == "FakeTensor"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exp_over_its_whole_range(device, dtype):
    # Each row is [0, t]: its second probability is e^t / (1 + e^t), so the
    # kernels' exp is seen at every t in [-100, 0] (random scores reach only
    # about [-10, 0]), underflow and -inf included; log-softmax too.
    t = torch.cat([torch.linspace(-100, 0, 20001, dtype=torch.float64),
                   torch.tensor([-math.inf, -87.4, -87.3, -1e-7])])
    x = torch.stack([torch.zeros_like(t), t], -1)
    L = torch.full((t.numel(),), 2, device=device)
    want = torch.softmax(x, -1)[:, 1]
    got = maskext.masked_softmax(x.to(device, dtype), lengths=L)[:, 1].double().cpu()
    own = torch.softmax(x.to(dtype), -1)[:, 1].double()  # what PyTorch gets in this dtype
    rel_tol = 2 * ((own - want).abs() / want.clamp_min(1e-300)).max().item() + 1e-7
    normal = want >= torch.finfo(torch.float32).tiny
    rel = (got - want).abs() / want.clamp_min(1e-300)
    assert rel[normal].max().item() <= rel_tol
    assert (got[~normal] <= torch.finfo(torch.float32).tiny).all()
    assert got[t == -math.inf].item() == 0
    got_log = maskext.masked_log_softmax(x.to(device, dtype), lengths=L)[:, 1].double().cpu()
    want_log = torch.log_softmax(x, -1)[:, 1].clamp_min(torch.finfo(dtype).min)
    torch.testing.assert_close(got_log, want_log, atol=1e-5 if dtype == torch.float32 else 0.1,
                               rtol=1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_row_length_on_every_path(device, dtype):
    # A causal 40x40 mask gives visible lengths 1..40, one row each: shorter
    # than a vector, one vector, a vector and a tail, ... The CPU kernels
    # handle a row's last n % V keys as a vector overlapping the body (written
    # twice, counted once); each path (direct, through the score buffer with
    # bias or softcap, log-softmax; forward and backward) must get every
    # length right, with the masked keys exactly 0.
    T = 40
    x = (torch.randn(2, 3, T, T, device=device, dtype=dtype) * 3).requires_grad_()
    dy = torch.randn(2, 3, T, T, device=device, dtype=dtype)
    bias = torch.randn(T, T, device=device, dtype=dtype)
    L = torch.tensor([T, 29], device=device)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6, rtol=1e-5)
    for fn, ref in ((maskext.masked_softmax, R.masked_softmax),
                    (maskext.masked_log_softmax, R.masked_log_softmax)):
        for kw in (dict(), dict(bias=bias), dict(softcap=5.0), dict(scale=0.7)):
            kw = dict(kw, causal=True, lengths=L)
            got = fn(x, **kw)
            want = ref(x, **kw)
            torch.testing.assert_close(got, want, **tol)
            gx = torch.autograd.grad(got, x, dy)[0]
            rx = torch.autograd.grad(want, x, dy)[0]
            torch.testing.assert_close(gx, rx, **tol)
            hidden = ~R.visible(T, T, lengths=L, causal=True).expand_as(x)
            assert (gx[hidden] == 0).all()
            assert (got[hidden] == (0 if fn is maskext.masked_softmax else torch.finfo(dtype).min)).all()


@functools.cache
def _bench_common():
    """benchmarks/common.py, loaded once: its peak_bytes (bench_softmax's memory
    table) checks the target with the measurement that reports it."""
    spec = importlib.util.spec_from_file_location(
        "maskext_bench_common", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                             "common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    return common


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Tk", [33, 1024, 4104])
def test_forward_allocates_only_its_output(device, dtype, Tk):
    # The lengths path (register tiers, streamed or not, on CUDA), the mask
    # path, and log-softmax: no workspace, no mask materialised, no copy of x.
    x = torch.randn(3, 2, 16, Tk, device=device, dtype=dtype)
    L = torch.tensor([Tk, Tk // 2, 0], device=device)
    keep = torch.rand(3, 1, 1, Tk, device=device) > 0.3
    out_bytes = x.numel() * x.element_size()
    for call in (lambda: maskext.masked_softmax(x, lengths=L, causal=True),
                 lambda: maskext.masked_softmax(x, keep, lengths=L),
                 lambda: maskext.masked_log_softmax(x, lengths=L)):
        call()  # a first call may allocate once (e.g. the CUDA occupancy queries' state)
        peak = _bench_common().peak_bytes(call, device)
        assert peak == out_bytes, (peak, out_bytes)
