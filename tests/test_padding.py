"""fill_padding and pooling over the real steps, against maskext.reference."""
import pytest
import torch

import maskext
from maskext import reference as R


def rand_lengths(B, T, device):
    L = torch.randint(0, T + 1, (B,))
    if B >= 3:
        L[0], L[1], L[2] = 0, T, T + 4
    return L.to(device)


SHAPES = [((5, 7), 1), ((5, 97, 3), 1), ((4, 3, 33, 2), 2), ((4, 6, 5), -1), ((3, 1, 1), 1),
          ((0, 4, 2), 1), ((3, 0, 2), 1), ((3, 4, 0), 1)]


@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("left_pad", [False, True])
def test_fill_padding(device, shape, dim, left_pad):
    x = torch.randn(shape, device=device)
    L = rand_lengths(shape[0], shape[dim], device)
    want = R.fill_padding(x, L, -7.5, dim=dim, left_pad=left_pad)
    torch.testing.assert_close(maskext.fill_padding(x, L, -7.5, dim=dim, left_pad=left_pad), want)
    y = x.clone()
    assert maskext.fill_padding_(y, L, -7.5, dim=dim, left_pad=left_pad) is y
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.bool])
def test_fill_padding_dtypes(device, dtype):
    x = (torch.randn(4, 9, 3, device=device) * 10).to(dtype)
    L = rand_lengths(4, 9, device)
    value = True if dtype == torch.bool else 3
    torch.testing.assert_close(maskext.fill_padding(x, L, value), R.fill_padding(x, L, value))


# Steps of a multiple of 16 bytes: on CUDA a thread per 16-byte chunk of the
# flat tensor (fill_padding_flat_kernel), 4 chunks per thread, the chunk's step
# and batch element by 32-bit divisions; several dims between the batch and
# the steps, tensors of more chunks than one block's tile, and x not 16-byte
# aligned (the per-step kernel).
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.int64, torch.bool])
@pytest.mark.parametrize("shape,dim", [((3, 5, 2), 1), ((4, 3, 37, 1), 2), ((6, 513, 2), 1),
                                       ((2, 3, 700, 3), 2)])
@pytest.mark.parametrize("left_pad", [False, True])
def test_fill_padding_vector_steps(device, dtype, shape, dim, left_pad):
    per16 = 16 // torch.empty((), dtype=dtype).element_size()
    shape = shape[:-1] + (shape[-1] * per16,)  # I: a multiple of 16 bytes
    x = (torch.randn(shape, device=device) * 10).to(dtype)
    L = rand_lengths(shape[0], shape[dim], device)
    value = True if dtype == torch.bool else 3
    want = R.fill_padding(x, L, value, dim=dim, left_pad=left_pad)
    torch.testing.assert_close(maskext.fill_padding(x, L, value, dim=dim, left_pad=left_pad), want)
    y = x.clone()
    maskext.fill_padding_(y, L, value, dim=dim, left_pad=left_pad)
    torch.testing.assert_close(y, want)
    xm = torch.cat([x.flatten()[:1], x.flatten()])[1:].view(shape)  # one element past 16 bytes
    torch.testing.assert_close(maskext.fill_padding(xm, L, value, dim=dim, left_pad=left_pad), want)


def test_fill_padding_non_contiguous_in_place(device):
    base = torch.randn(6, 4, 10, device=device)
    x = base.transpose(1, 2)  # (6, 10, 4), not contiguous
    L = rand_lengths(6, 10, device)
    want = R.fill_padding(x, L, 0.0)
    maskext.fill_padding_(x, L)
    torch.testing.assert_close(x, want)
    torch.testing.assert_close(base.transpose(1, 2), want)  # written through to the storage


def test_fill_padding_grad(device):
    x = torch.randn(3, 5, 2, device=device, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([0, 5, 2], device=device)
    assert torch.autograd.gradcheck(lambda x: maskext.fill_padding(x, L, 1.5), (x,))
    y = x * 1
    maskext.fill_padding_(y, L)  # in place under autograd
    y.sum().backward()
    torch.testing.assert_close(x.grad, R.lengths_to_mask(L, 5)[..., None].expand(3, 5, 2).double())


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("shape,dim", SHAPES[:5])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pooling(device, name, shape, dim, keepdim):
    x = torch.randn(shape, device=device)
    L = rand_lengths(shape[0], shape[dim], device)
    got = getattr(maskext, f"masked_{name}")(x, L, dim=dim, keepdim=keepdim)
    want = getattr(R, f"masked_{name}")(x, L, dim=dim, keepdim=keepdim)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("feat", [8, 24, 520])
def test_pooling_low_precision(device, dtype, feat):
    # feat: 1, 3 and 65 chunks of 16 bytes (on CUDA, 8 columns per thread);
    # then x one element past a 16-byte boundary (a column per thread).
    x = torch.randn(4, 300, feat, device=device).to(dtype)
    L = rand_lengths(4, 300, device)
    xm = torch.cat([x.flatten()[:1], x.flatten()])[1:].view(x.shape)
    for name in ("sum", "mean", "max"):
        want = getattr(R, f"masked_{name}")(x.double(), L).to(dtype)
        for xx in (x, xm):
            got = getattr(maskext, f"masked_{name}")(xx, L)
            torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("feat", [1, 2, 5, 8, 32, 70, 264])
def test_pooling_long_steps_every_width(device, feat):
    # The CUDA kernel splits the steps over up to 256 slices and the features
    # over tiles of up to 32 threads across (of 4 fp32 columns each where the
    # features are a multiple of 4: 8, 32, 264; a partial last tile at 5, 70
    # and 264), and with 10-30 tiles for a GPU's hundreds of blocks the steps
    # of each row split over 5-17 blocks, combined by a second kernel: every
    # slice count, tile edge, split edge, empty and full row, and a NaN that
    # max must keep.
    B, T = 5, 700
    x = torch.randn(B, 2, T, feat, device=device)
    L = torch.tensor([0, T, 1, 333, 699], device=device)
    x[3, 1, 200, feat - 1] = float("nan")  # visible (200 < 333)
    x[4, 0, 699, 0] = float("nan")  # padding (699 >= 699): must not show
    for name in ("sum", "mean", "max"):
        got = getattr(maskext, f"masked_{name}")(x, L, dim=2)
        want = getattr(R, f"masked_{name}")(x, L, dim=2)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5, equal_nan=True)
        assert got[3, 1, feat - 1].isnan() and not got[4].isnan().any() and (got[0] == 0).all()


def test_pooling_empty_sequences(device):
    x = torch.randn(3, 4, 2, device=device)
    L = torch.tensor([0, 4, 1], device=device)
    assert (maskext.masked_mean(x, L)[0] == 0).all()
    assert (maskext.masked_max(x, L)[0] == 0).all()
    assert (maskext.masked_sum(x, L)[0] == 0).all()


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_pooling_gradcheck(device, name):
    x = torch.randn(3, 6, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([0, 6, 3], device=device)
    f = getattr(maskext, f"masked_{name}")
    assert torch.autograd.gradcheck(lambda x: f(x, L, dim=1), (x,))
    L2 = torch.tensor([1, 2, 0], device=device)  # along dim 2 (of size 2)
    assert torch.autograd.gradcheck(lambda x: f(x, L2, dim=2, keepdim=True), (x,))
    # gradients reach only the real steps
    y = f(x, L).sum()
    (g,) = torch.autograd.grad(y, x)
    assert (g[0] == 0).all() and (g[2, 3:] == 0).all()


def test_errors():
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"fill_padding: lengths must have shape \[B\] with B = x.size\(0\) = 2, got \[3\]"):
        maskext.fill_padding(x, torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match=r"fill_padding: dim must be in \[1, 2\) \(dim 0 is the batch\), got 0"):
        maskext.fill_padding(x, torch.tensor([1, 2]), dim=0)
    with pytest.raises(RuntimeError, match=r"masked_pool: x must be float16, bfloat16, float32 or float64, got Long"):
        maskext.masked_sum(x.long(), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match=r"masked_pool: lengths must be >= 0, got a value of -1"):
        maskext.masked_mean(x, torch.tensor([1, -1]))


def test_opcheck_and_compile(device):
    ops = torch.ops.maskext
    x = torch.randn(3, 5, 4, device=device, requires_grad=True)
    L = torch.tensor([5, 0, 2], device=device)
    torch.library.opcheck(ops.fill_padding, (x, L, 2.0, 1, True))
    torch.library.opcheck(ops.fill_padding_, (x.detach().clone(), L, 2.0, 2, False))
    for mode in (0, 1, 2):
        torch.library.opcheck(ops.masked_pool, (x, L, 1, mode))

    def f(x, L):
        y = maskext.fill_padding(x, L, 0.0)
        return maskext.masked_mean(y, L) + maskext.masked_max(x, L) + maskext.masked_sum(x, L, dim=2)[..., :1]

    got = torch.compile(f, fullgraph=True)(x, L)
    torch.testing.assert_close(got, f(x, L))
    (g1,) = torch.autograd.grad(got.sum(), x)
    (g2,) = torch.autograd.grad(f(x, L).sum(), x)
    torch.testing.assert_close(g1, g2)


def test_fill_padding_inplace_op_under_autograd(device):
    """torch.ops.maskext.fill_padding_ itself (not only maskext.fill_padding_):
    the gradient of the padding is 0 (it was passed through, silently), and the
    version counter moves, so a backward that saved the tensor raises."""
    x = torch.randn(3, 5, 2, device=device, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([0, 5, 2], device=device)
    y = x * 1
    torch.ops.maskext.fill_padding_(y, L, -1.0, 1, False)
    torch.testing.assert_close(y, R.fill_padding(x, L, -1.0))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, R.lengths_to_mask(L, 5)[..., None].expand(3, 5, 2).double())
    s = x.sigmoid()  # saves its output for the backward
    v = s._version
    with torch.no_grad():
        torch.ops.maskext.fill_padding_(s, L, 0.0, 1, False)
    assert s._version > v
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        s.sum().backward()


# Steps of whole 16-byte chunks or not, x aligned like the output or not: on
# CUDA the real steps are then copied with 128-bit or element-wise accesses.
@pytest.mark.parametrize("F", [1, 5, 8, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bool])
@pytest.mark.parametrize("misaligned", [False, True])
def test_fill_padding_chunked_copies(device, F, dtype, misaligned):
    B, T = 5, 9
    n = B * T * F
    flat = (torch.randn(n + 1, device=device) * 10).to(dtype)
    x = (flat[1:] if misaligned else flat[:n]).view(B, T, F)
    L = rand_lengths(B, T, device)
    value = True if dtype == torch.bool else -2
    torch.testing.assert_close(maskext.fill_padding(x, L, value), R.fill_padding(x, L, value))
