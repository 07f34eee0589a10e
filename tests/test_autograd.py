"""gradcheck and gradgradcheck (float64) of every differentiable op and argument,
including the backward ops themselves, and second-order gradients against
maskext.reference: double backward must never be silently zero."""
import warnings

import pytest
import torch

import maskext
from maskext import reference as R

f64 = torch.float64


def gradchecks(fn, inputs):
    """gradcheck and gradgradcheck, with every autograd warning an error (a
    backward op without autograd only warns, then gives zeros)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def rand(*shape, device, requires_grad=True):
    return torch.randn(*shape, device=device, dtype=f64, requires_grad=requires_grad)


SOFTMAX_CASES = {
    # every mask kind at once, a fully masked query row (q_lengths) and batch element (lengths 0)
    "all_kinds": lambda d: dict(mask=torch.rand(3, 1, 4, 6, device=d) > 0.2,
                                lengths=torch.tensor([6, 3, 0], device=d),
                                q_lengths=torch.tensor([4, 2, 3], device=d, dtype=torch.int32),
                                causal=True, window=(2, None), scale=0.7),
    "lengths_only": lambda d: dict(lengths=torch.tensor([5, 6, 1], device=d), scale=1.3),
    "window_both_sides": lambda d: dict(window=(1, 1), lengths=torch.tensor([6, 4, 2], device=d)),
    "no_mask": lambda d: dict(),
}


@pytest.mark.parametrize("fn", [maskext.masked_softmax, maskext.masked_log_softmax],
                         ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
def test_softmax_gradchecks(device, fn, case):
    kw = SOFTMAX_CASES[case](device)
    x, bias = rand(3, 2, 4, 6, device=device), rand(1, 2, 4, 6, device=device)
    gradchecks(lambda x, b: fn(x, bias=b, **kw), (x, bias))
    gradchecks(lambda x: fn(x, **kw), (x,))  # x alone: the backward without dbias


@pytest.mark.parametrize("fn", [maskext.masked_softmax, maskext.masked_log_softmax],
                         ids=["softmax", "log_softmax"])
def test_softmax_gradchecks_2d_and_5d(device, fn):
    L = torch.tensor([4, 0, 7], device=device)
    gradchecks(lambda x: fn(x, lengths=L), (rand(3, 7, device=device),))
    mask = torch.rand(3, 1, 2, 1, 5, device=device) > 0.3
    gradchecks(lambda x, b: fn(x, mask, lengths=L, causal=True, bias=b),
               (rand(3, 2, 2, 4, 5, device=device), rand(5, device=device)))


@pytest.mark.parametrize("op", ["masked_softmax_backward", "masked_log_softmax_backward"])
def test_backward_ops_gradchecks(device, op):
    """The backward ops as functions of (grad_out, out) for ANY out, so their
    derivative must also ignore out and grad_out outside the visible interval."""
    backward = getattr(torch.ops.maskext, op)
    L = torch.tensor([6, 2, 0], device=device)
    QL = torch.tensor([4, 1, 3], device=device)
    g = rand(3, 2, 4, 6, device=device)
    y = (rand(3, 2, 4, 6, device=device, requires_grad=False).abs() / 6).requires_grad_()
    if op == "masked_log_softmax_backward":  # some positions masked by out == finfo.min
        y = (y.detach().log() - 1).masked_fill(torch.rand_like(y) < 0.2, torch.finfo(f64).min)
        y.requires_grad_()
    for spec in ((L, None, False, -1, -1, 0.7), (L, QL, True, 1, 2, 1.0), (None, None, False, -1, -1, 1.0)):
        gradchecks(lambda g, y: backward(g, y, *spec), (g, y))


def test_padding_gradchecks(device):
    L = torch.tensor([0, 5, 2], device=device)
    x = rand(3, 5, 2, device=device)
    gradchecks(lambda x: maskext.fill_padding(x, L, 1.5), (x,))
    gradchecks(lambda x: maskext.fill_padding(x, L, 0.0, dim=1, left_pad=True), (x,))

    def in_place(x):
        y = x * 1
        maskext.fill_padding_(y, L, -2.0)
        return y

    gradchecks(in_place, (x,))
    for f in (maskext.masked_sum, maskext.masked_mean, maskext.masked_max):
        gradchecks(lambda x: f(x, L, dim=1), (x,))
        gradchecks(lambda x: f(x, torch.tensor([1, 2, 0], device=device), dim=2, keepdim=True), (x,))


@pytest.mark.parametrize("hard", [False, True])
def test_gate_gradchecks(device, hard):
    x, z = rand(3, 5, 4, device=device), rand(3, 5, 4, device=device)
    L = torch.tensor([5, 0, 2], device=device, dtype=torch.int32)
    for lengths in (L, None):
        first = torch.autograd.gradcheck if not hard else (lambda f, i: True)  # hard: straight-through
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert first(lambda x, z: maskext.sigmoid_gate(x, z, lengths, temperature=0.7, hard=hard), (x, z))
            assert first(lambda z: maskext.soft_mask(z, lengths, temperature=1.3, hard=hard), (z,))
            assert torch.autograd.gradgradcheck(
                lambda x, z: maskext.sigmoid_gate(x, z, lengths, temperature=0.7, hard=hard), (x, z))
            assert torch.autograd.gradgradcheck(
                lambda z: maskext.soft_mask(z, lengths, temperature=1.3, hard=hard), (z,))
    # the backward op itself, with respect to grad, x and logits
    g = rand(3, 5, 4, device=device)
    gradchecks(lambda g, x, z: torch.ops.maskext.gate_backward(g, x, z, L, 0.7, hard), (g, x, z))
    gradchecks(lambda g, z: torch.ops.maskext.gate_backward(g, None, z, L, 0.7, hard)[1], (g, z))


def test_mask_generator_gradgrad(device):
    """The module's paths composed (gate, attention bias into the softmax)."""
    gen = maskext.nn.MaskGenerator(2, 2, temperature=0.5).to(device, f64)
    x = rand(2, 4, 2, device=device)
    L = torch.tensor([4, 3], device=device)
    scores = rand(2, 2, 4, 4, device=device)
    gradchecks(lambda x, s: maskext.masked_softmax(s, bias=gen.attention_bias(x, L)) + gen.gate(x, L).sum(),
               (x, scores))


def _second_order(fn, x, w, v):
    """d/dx <v, d/dx sum(w * fn(x))>: a Hessian-vector product."""
    (g,) = torch.autograd.grad((fn(x) * w).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return h


@pytest.mark.parametrize("name", ["masked_softmax", "masked_log_softmax"])
def test_hessian_vector_product_matches_reference(device, name):
    """The issue's case: this second-order gradient was exactly 0."""
    ours, ref = getattr(maskext, name), getattr(R, name)
    kw = dict(lengths=torch.tensor([5, 2, 0], device=device), causal=True, scale=0.8)
    x = rand(3, 2, 5, 5, device=device)
    w, v = rand(3, 2, 5, 5, device=device, requires_grad=False), rand(3, 2, 5, 5, device=device,
                                                                       requires_grad=False)
    if name == "masked_log_softmax":  # masked outputs are finfo.min: keep the loss finite
        w = w * R.masked_softmax(x.detach(), **kw).gt(0)
    want = _second_order(lambda x: ref(x, **kw), x, w, v)
    got = _second_order(lambda x: ours(x, **kw), x, w, v)
    assert want.norm() > 0.1
    torch.testing.assert_close(got, want)


def test_bias_and_gate_second_order_match_reference(device):
    L = torch.tensor([5, 3], device=device)
    x, bias = rand(2, 3, 5, device=device), rand(3, 5, device=device)
    w, v = rand(2, 3, 5, device=device, requires_grad=False), rand(3, 5, device=device, requires_grad=False)
    for fn in (maskext.masked_softmax, R.masked_softmax):
        (g,) = torch.autograd.grad((fn(x, lengths=L, bias=bias) * w).sum(), bias, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), bias)
        if fn is maskext.masked_softmax:
            got = h
    torch.testing.assert_close(got, h)
    assert h.norm() > 0.1
    z = rand(2, 5, 3, device=device)
    xs = rand(2, 5, 3, device=device)
    w, v = (rand(2, 5, 3, device=device, requires_grad=False) for _ in range(2))
    res = []
    for fn in (maskext.sigmoid_gate, R.sigmoid_gate):
        gx, gz = torch.autograd.grad((fn(xs, z, L, temperature=0.6) * w).sum(), (xs, z), create_graph=True)
        res.append(torch.autograd.grad((gz * v).sum() + (gx * v).sum(), (xs, z)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b)
        assert b.norm() > 0.1


DIFFERENTIABLE_OPS = ["masked_softmax", "masked_softmax_backward", "masked_log_softmax",
                      "masked_log_softmax_backward", "fill_padding", "masked_pool", "gate",
                      "gate_backward"]


@pytest.mark.parametrize("op", DIFFERENTIABLE_OPS)
def test_autograd_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"maskext::{op}", "Autograd")


def _grads(out, leaves, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, leaves, g.to(out.device), allow_unused=True)


@pytest.mark.parametrize("name", ["masked_softmax", "masked_log_softmax"])
def test_eager_autograd_path_matches_registered(device, name):
    # maskext.<op> with a gradient goes through a torch.autograd.Function around
    # the unboxed entry point (ops._EAGER_AUTOGRAD); torch.ops.maskext.<op>
    # through register_autograd's wrapper: the same outputs and gradients.
    x = rand(2, 3, 4, 6, device=device)
    bias, sinks = rand(1, 3, 4, 6, device=device), rand(3, 1, device=device)
    L = torch.tensor([6, 2], device=device)
    y = getattr(maskext, name)(x, lengths=L, causal=True, bias=bias, sinks=sinks, softcap=2.0,
                               scale=0.5)
    assert type(y.grad_fn).__name__ == f"_{name}_autogradBackward"
    args = (x, None, bias, L, None, True, -1, -1, 0.5, None, None, None, 0, None, 0, 2.0, sinks)
    want = getattr(torch.ops.maskext, name)(*args)
    assert "_autograd" not in type(want.grad_fn).__name__
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    for g, w in zip(_grads(y, (x, bias, sinks)), _grads(want, (x, bias, sinks))):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_eager_autograd_path_gate_and_pool(device):
    x, logits = rand(2, 5, 3, device=device), rand(2, 5, 3, device=device)
    L = torch.tensor([5, 2], device=device)
    y = maskext.sigmoid_gate(x, logits, L, temperature=0.5)
    assert type(y.grad_fn).__name__ == "_gate_autogradBackward"
    want = torch.ops.maskext.gate(x, logits, L, 2.0, False)
    for g, w in zip(_grads(y, (x, logits)), _grads(want, (x, logits))):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    p = maskext.masked_max(x, L)
    assert type(p.grad_fn.next_functions[0][0]).__name__ == "_masked_pool_autogradBackward"
    torch.testing.assert_close(_grads(p, (x,))[0],
                               _grads(torch.ops.maskext.masked_pool(x, L, 1, 2), (x,))[0])

