"""Soft masks: soft_mask / sigmoid_gate ops and the MaskGenerator module."""
import pytest
import torch

import maskext
from maskext import reference as R
from maskext.nn import MaskGenerator


def rand_lengths(B, T, device):
    L = torch.randint(0, T + 1, (B,))
    if B >= 3:
        L[0], L[1], L[2] = 0, T, T + 2
    return L.to(device)


@pytest.mark.parametrize("shape", [(4, 9, 5), (3, 1, 1), (4, 33, 2, 3), (0, 3, 2), (3, 0, 4)])
@pytest.mark.parametrize("temperature,hard", [(1.0, False), (0.3, False), (2.0, True)])
def test_soft_mask_and_gate(device, shape, temperature, hard):
    logits = torch.randn(shape, device=device) * 3
    x = torch.randn(shape, device=device)
    L = rand_lengths(shape[0], shape[1], device)
    for lengths in (L, None):
        m = maskext.soft_mask(logits, lengths, temperature=temperature, hard=hard)
        torch.testing.assert_close(m, R.soft_mask(logits, lengths, temperature=temperature, hard=hard))
        g = maskext.sigmoid_gate(x, logits, lengths, temperature=temperature, hard=hard)
        torch.testing.assert_close(g, R.sigmoid_gate(x, logits, lengths, temperature=temperature,
                                                     hard=hard))
    if shape[0] >= 3:  # lengths[0] == 0: padding is exactly 0 whatever the logits
        assert (maskext.soft_mask(logits, L, temperature=temperature, hard=hard)[0] == 0).all()
        assert (maskext.sigmoid_gate(x, logits, L)[0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gate_low_precision(device, dtype):
    logits, x = (torch.randn(4, 50, 8, device=device).to(dtype) for _ in range(2))
    L = rand_lengths(4, 50, device)
    got = maskext.sigmoid_gate(x, logits, L, temperature=0.5)
    want = R.sigmoid_gate(x.double(), logits.double(), L, temperature=0.5).to(dtype)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def test_gate_gradcheck(device):
    x = torch.randn(3, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(3, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([5, 0, 2], device=device)
    assert torch.autograd.gradcheck(
        lambda x, z: maskext.sigmoid_gate(x, z, L, temperature=0.7), (x, logits))
    assert torch.autograd.gradcheck(lambda z: maskext.soft_mask(z, L, temperature=1.3), (logits,))


def test_hard_is_straight_through(device):
    logits = torch.randn(2, 6, 3, device=device, requires_grad=True)
    L = torch.tensor([6, 3], device=device)
    m = maskext.soft_mask(logits, L, hard=True)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    (g,) = torch.autograd.grad(m.sum(), logits)
    s = torch.sigmoid(logits.detach())
    want = R.fill_padding(s * (1 - s), L, 0.0)
    torch.testing.assert_close(g, want)


def test_opcheck_and_compile(device):
    ops = torch.ops.maskext
    x = torch.randn(3, 5, 4, device=device, requires_grad=True)
    z = torch.randn(3, 5, 4, device=device, requires_grad=True)
    L = torch.tensor([5, 0, 2], device=device, dtype=torch.int32)
    torch.library.opcheck(ops.gate, (x, z, L, 2.0, False))
    torch.library.opcheck(ops.gate, (None, z, None, 1.0, True))
    torch.library.opcheck(ops.gate_backward, (torch.randn_like(z), x, z, L, 2.0, False))
    gen = MaskGenerator(4, 4).to(device)
    f = lambda x, L: gen.gate(x, L).sum() + gen(x, L).sum()
    got = torch.compile(f, fullgraph=True)(x, L)
    torch.testing.assert_close(got, f(x, L))


def test_mask_generator_api(device):
    B, T, D = 3, 7, 5
    gen = MaskGenerator(D, 2, temperature=0.5).to(device)
    x = torch.randn(B, T, D, device=device)
    L = torch.tensor([7, 3, 0], device=device)
    m = gen(x, L)
    assert m.shape == (B, T, 2) and ((m > 0) & (m < 1))[0].all()
    assert (m[1, 3:] == 0).all() and (m[2] == 0).all()
    torch.testing.assert_close(m, torch.sigmoid(gen.linear(x) / 0.5) * R._steps_mask(m, L, 1))
    with pytest.raises(ValueError, match="latent_size == input_size"):
        gen.gate(x, L)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        MaskGenerator(D, 2, temperature=0)
    # attention bias: probabilities proportional to mask * exp(score)
    bias = gen.attention_bias(x, L)  # (B, 2, 1, T)
    assert bias.shape == (B, 2, 1, T) and (bias[1, :, :, 3:] == float("-inf")).all()
    scores = torch.randn(B, 2, T, T, device=device)
    p = maskext.masked_softmax(scores, bias=bias)
    w = gen(x, L).transpose(1, 2)[:, :, None, :] * scores.exp()
    want = w / w.sum(-1, keepdim=True).clamp(min=1e-30)
    torch.testing.assert_close(p[:2], want[:2], atol=1e-5, rtol=1e-4)
    assert (p[2] == 0).all()  # no real keys: rows are 0


def test_mask_generator_learns_the_signal_features(device):
    """Toy task: y = sum of the first 3 of 8 features over the real steps; the
    other 5 features are large noise. A gate trained for a few steps must open
    on the signal features and close on the noise, padding staying 0."""
    torch.manual_seed(0)
    B, T, D, signal = 32, 10, 8, 3
    gen = MaskGenerator(D, D).to(device)
    with torch.no_grad():  # the gate is driven by the bias (features are random)
        gen.linear.weight.zero_()
    opt = torch.optim.Adam(gen.parameters(), lr=0.1)
    for step in range(150):
        x = torch.randn(B, T, D, device=device)
        x[..., signal:] *= 3.0
        L = torch.randint(1, T + 1, (B,), device=device)
        target = maskext.masked_sum(x[..., :signal].sum(-1, keepdim=True), L)
        gated = gen.gate(x, L)
        assert (gated.abs().sum(-1)[torch.arange(T, device=device)[None] >= L[:, None]] == 0).all()
        loss = ((maskext.masked_sum(gated.sum(-1, keepdim=True), L) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = gen(torch.zeros(1, 1, D, device=device))[0, 0]  # the learnt per-feature gate
    assert (m[:signal] > 0.9).all() and (m[signal:] < 0.1).all(), m
    assert loss.item() < 1.0


# Feature sizes that are and are not whole 16-byte chunks, and a misaligned x:
# on CUDA the first take the chunked kernels (one step lookup per chunk), the
# others and misaligned data the element-wise ones.
@pytest.mark.parametrize("F", [1, 3, 8, 16, 24])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("misaligned", [False, True])
def test_gate_chunked_and_elementwise(device, F, dtype, misaligned):
    B, T = 5, 11
    logits = (torch.randn(B, T, F, device=device) * 3).to(dtype)
    if misaligned:  # a contiguous x whose data starts one element past a 16-byte boundary
        x = torch.randn(B * T * F + 1, device=device).to(dtype)[1:].view(B, T, F)
    else:
        x = torch.randn(B, T, F, device=device).to(dtype)
    L = rand_lengths(B, T, device)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype in (torch.float16, torch.bfloat16) else {}
    for hard in (False, True):
        got = maskext.sigmoid_gate(x, logits, L, temperature=0.7, hard=hard)
        want = R.sigmoid_gate(x.double(), logits.double(), L, temperature=0.7, hard=hard)
        torch.testing.assert_close(got, want.to(dtype), **tol)
    xg = x.detach().clone().requires_grad_(True)
    lg = logits.detach().clone().requires_grad_(True)
    xr = x.detach().double().requires_grad_(True)
    lr = logits.detach().double().requires_grad_(True)
    gy = torch.randn(B, T, F, device=device).to(dtype)
    maskext.sigmoid_gate(xg, lg, L, temperature=0.7).backward(gy)
    R.sigmoid_gate(xr, lr, L, temperature=0.7).backward(gy.double())
    torch.testing.assert_close(xg.grad, xr.grad.to(dtype), **tol)
    torch.testing.assert_close(lg.grad, lr.grad.to(dtype), **tol)
