"""Masks from lengths, and lengths from masks / padded data, against maskext.reference."""

import pytest
import torch

import maskext
from maskext import reference as R

SIZES = [0, 1, 3, 97, 1000, 4097]


def rand_lengths(B, T, dtype=torch.int64, device="cpu", over=True):
    """Lengths in [0, T], with the edge cases 0, T and (if over) > T forced in."""
    L = torch.randint(0, T + 1, (B,), dtype=dtype)
    if B >= 3:
        L[0], L[1] = 0, T
        if over:
            L[2] = T + 5
    return L.to(device)


# ---------------------------------------------------------------- lengths_to_mask

@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("B", [0, 1, 5])
@pytest.mark.parametrize("ldtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("left_pad", [False, True])
def test_lengths_to_mask(device, B, T, ldtype, left_pad):
    L = rand_lengths(B, T, ldtype, device)
    got = maskext.lengths_to_mask(L, T, left_pad=left_pad)
    assert got.dtype == torch.bool and got.shape == (B, T) and got.device == L.device
    torch.testing.assert_close(got, R.lengths_to_mask(L, T, left_pad=left_pad))
    pad = maskext.lengths_to_padding_mask(L, T, left_pad=left_pad)
    torch.testing.assert_close(pad, ~got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64,
                                   torch.uint8])
def test_lengths_to_mask_dtypes(device, dtype):
    L = rand_lengths(7, 33, device=device)
    got = maskext.lengths_to_mask(L, 33, dtype=dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, R.lengths_to_mask(L, 33, dtype=dtype))


def test_lengths_to_mask_max_len_from_data(device):
    L = torch.tensor([3, 0, 7, 2], device=device)
    got = maskext.lengths_to_mask(L)
    assert got.shape == (4, 7)
    torch.testing.assert_close(got, R.lengths_to_mask(L))
    assert maskext.lengths_to_mask(torch.zeros(0, dtype=torch.int64, device=device)).shape == (0, 0)
    assert maskext.lengths_to_mask(torch.zeros(3, dtype=torch.int64, device=device)).shape == (3, 0)


def test_padding_mask_is_a_key_padding_mask_for_mha():
    B, T, E = 3, 6, 8
    L = torch.tensor([6, 2, 4])
    mha = torch.nn.MultiheadAttention(E, 2, batch_first=True).eval()
    x = torch.randn(B, T, E)
    ours, _ = mha(x, x, x, key_padding_mask=maskext.lengths_to_padding_mask(L, T))
    theirs, _ = mha(x, x, x, key_padding_mask=torch.arange(T)[None] >= L[:, None])
    torch.testing.assert_close(ours, theirs)


def test_strided_lengths(device):
    L = torch.tensor([[3, 9], [0, 1], [7, 2], [5, 5]], device=device)[:, 1]  # stride 2
    torch.testing.assert_close(maskext.lengths_to_mask(L, 8), R.lengths_to_mask(L, 8))
    torch.testing.assert_close(maskext.attention_mask(L, q_len=8, k_len=8, q_lengths=L.flip(0)),
                               R.attention_mask(L, q_len=8, k_len=8, q_lengths=L.flip(0)))
    x = torch.randn(4, 8, 3, device=device)
    torch.testing.assert_close(maskext.fill_padding(x, L), R.fill_padding(x, L))


def test_huge_lengths_stay_in_bounds(device):
    L = torch.tensor([2**62, -0, 2**31 - 1, 5], device=device)
    got = maskext.lengths_to_mask(L, 9)
    torch.testing.assert_close(got, R.lengths_to_mask(L, 9))
    am = maskext.attention_mask(L, q_len=4, k_len=9, q_lengths=L, causal=True)
    torch.testing.assert_close(am, R.attention_mask(L, q_len=4, k_len=9, q_lengths=L, causal=True))


# ---------------------------------------------------------------- mask_to_lengths / lengths_from_padded

@pytest.mark.parametrize("T", [0, 1, 97, 1025])
def test_mask_to_lengths_roundtrip(device, T):
    L = rand_lengths(6, T, device=device, over=False)
    assert torch.equal(maskext.mask_to_lengths(maskext.lengths_to_mask(L, T)), L.to(torch.int64))


def test_mask_to_lengths_non_contiguous(device):
    m = torch.rand(5, 40, device=device) > 0.3
    mt = m.t().contiguous().t()  # same values, column-major strides
    assert torch.equal(maskext.mask_to_lengths(mt), R.mask_to_lengths(m))
    assert torch.equal(maskext.mask_to_lengths(m[:, ::3]), R.mask_to_lengths(m[:, ::3]))


@pytest.mark.parametrize("shape,dim", [((4, 97, 5), 1), ((4, 5, 97), 2), ((4, 97), 1),
                                       ((3, 2, 50, 3), -2), ((3, 0, 4), 1)])
def test_lengths_from_padded(device, shape, dim):
    x = torch.randn(shape, device=device)
    T = x.shape[dim]
    L = rand_lengths(shape[0], T, device=device, over=False)
    pos = torch.arange(T, device=device).view([-1 if d == (dim % x.dim()) else 1
                                               for d in range(1, x.dim())])
    x = torch.where(pos[None] < L.view([-1] + [1] * (x.dim() - 1)), x, torch.zeros((), device=device))
    got = maskext.lengths_from_padded(x, 0.0, dim=dim)
    assert torch.equal(got, L)
    assert torch.equal(got, R.lengths_from_padded(x, 0.0, dim=dim % x.dim()))


def test_lengths_from_padded_token_ids(device):
    pad = 1
    ids = torch.tensor([[5, 7, pad, 9, pad, pad], [pad] * 6, [3, 4, 5, 6, 7, 8]], device=device)
    # A pad id inside the sequence does not end it: length is 1 + the last non-pad index.
    assert maskext.lengths_from_padded(ids, pad).tolist() == [4, 0, 6]
    assert maskext.lengths_from_padded(ids.to(torch.float16), pad).tolist() == [4, 0, 6]


# ---------------------------------------------------------------- attention_mask

SHAPES = [(1, 1), (3, 5), (5, 3), (97, 97), (1, 1000), (129, 1025)]
WINDOWS = [None, (0, 0), (2, None), (None, 3), (16, 4)]


@pytest.mark.parametrize("q_len,k_len", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
def test_attention_mask_bool(device, q_len, k_len, causal, window):
    B = 4
    L = rand_lengths(B, k_len, torch.int32, device)
    QL = rand_lengths(B, q_len, torch.int64, device)
    for lengths, q_lengths in [(L, None), (L, QL), (None, None), (None, QL)]:
        got = maskext.attention_mask(lengths, q_len=q_len, k_len=k_len, q_lengths=q_lengths,
                                     causal=causal, window=window, device=device)
        want = R.attention_mask(lengths, q_len=q_len, k_len=k_len, q_lengths=q_lengths,
                                causal=causal, window=window, device=device)
        assert got.shape == want.shape and got.device == want.device
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_attention_mask_additive(device, dtype):
    L = rand_lengths(5, 37, device=device)
    got = maskext.attention_mask(L, q_len=37, k_len=37, causal=True, dtype=dtype)
    want = R.attention_mask(L, q_len=37, k_len=37, causal=True, dtype=dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(torch.unique(got.double()).tolist()) <= {0.0, float(torch.finfo(dtype).min)}


def test_attention_mask_hf_style_matches_sdpa(device):
    """An additive mask from attention_mask gives SDPA the same result as a bool mask."""
    B, H, T, D = 3, 2, 10, 8
    L = torch.tensor([10, 4, 7], device=device)
    q, k, v = (torch.randn(B, H, T, D, device=device) for _ in range(3))
    add = maskext.attention_mask(L, q_len=T, k_len=T, causal=True, dtype=torch.float32)
    keep = maskext.attention_mask(L, q_len=T, k_len=T, causal=True)
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=add)
    b = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    rows = keep.any(-1, keepdim=True)  # rows with real keys
    torch.testing.assert_close(a * rows, b * rows)


def test_causal_alignment_is_bottom_right():
    # q_len == k_len: query i sees j <= i.
    m = maskext.attention_mask(q_len=4, k_len=4, causal=True)[0, 0]
    assert torch.equal(m, torch.ones(4, 4, dtype=torch.bool).tril())
    # decoding: one query sees every key.
    assert maskext.attention_mask(q_len=1, k_len=6, causal=True).all()
    # q_len < k_len: the last query sees every key, the first sees k_len - q_len + 1.
    m = maskext.attention_mask(q_len=2, k_len=5, causal=True)[0, 0]
    assert m.sum(-1).tolist() == [4, 5]


# ---------------------------------------------------------------- errors

def test_errors():
    L = torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match=r"lengths_to_mask: lengths must be an integer tensor \(int32 or int64\), got Float"):
        maskext.lengths_to_mask(L.float(), 3)
    with pytest.raises(RuntimeError, match=r"lengths_to_mask: lengths must be 1-D, got shape \[2, 1\]"):
        maskext.lengths_to_mask(L[:, None], 3)
    with pytest.raises(RuntimeError, match=r"lengths_to_padding_mask: lengths must be >= 0, got a value of -2"):
        maskext.lengths_to_padding_mask(torch.tensor([1, -2]), 3)
    with pytest.raises(RuntimeError, match=r"lengths_to_mask: lengths must be >= 0, got a value of -1"):
        maskext.lengths_to_mask(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"lengths_to_mask: max_len must be an int >= 0, got -1"):
        maskext.lengths_to_mask(L, -1)
    with pytest.raises(TypeError, match=r"lengths_to_mask: lengths must be a torch.Tensor, got list"):
        maskext.lengths_to_mask([1, 2], 3)
    with pytest.raises(ValueError, match=r"attention_mask: window left must be an int >= 0 or None \(unbounded\), got -1"):
        maskext.attention_mask(L, q_len=3, k_len=3, window=(-1, 0))
    with pytest.raises(ValueError, match=r"attention_mask: window must be a \(left, right\) pair"):
        maskext.attention_mask(L, q_len=3, k_len=3, window=3)
    with pytest.raises(RuntimeError, match=r"attention_mask: q_lengths must have shape \[B\] with B = lengths.size\(0\) = 2, got \[3\]"):
        maskext.attention_mask(L, q_len=3, k_len=3, q_lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match=r"attention_mask: dtype must be bool or a floating type, got Long"):
        maskext.attention_mask(L, q_len=3, k_len=3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"mask_to_lengths: mask must be a 2-D bool tensor \(B, T\), got Float"):
        maskext.mask_to_lengths(torch.ones(2, 3))
    with pytest.raises(RuntimeError, match=r"lengths_from_padded: dim must be in \[1, 3\) \(dim 0 is the batch\), got 0"):
        maskext.lengths_from_padded(torch.ones(2, 3, 4), 0, dim=0)


# ---------------------------------------------------------------- opcheck / compile

def _mask_op_samples(device):
    L = rand_lengths(4, 9, device=device)
    QL = rand_lengths(4, 5, torch.int32, device)
    ops = torch.ops.maskext
    return [
        (ops.lengths_to_mask, (L, 9, False, False, torch.bool)),
        (ops.lengths_to_mask, (L.to(torch.int32), 12, True, True, torch.float16)),
        (ops.attention_mask, (L, QL, 5, 9, True, 2, -1, torch.float32)),
        (ops.attention_mask, (L, None, 9, 9, False, -1, -1, torch.bool)),
        (ops.mask_to_lengths, (torch.rand(4, 9, device=device) > 0.5,)),
        (ops.lengths_from_padded, (torch.randn(4, 9, 3, device=device), 0.0, 1)),
    ]


def test_opcheck(device):
    for op, args in _mask_op_samples(device):
        torch.library.opcheck(op, args)


def test_compile_fullgraph(device):
    def build(L, QL):
        keep = maskext.lengths_to_mask(L, 16)
        am = maskext.attention_mask(L, q_len=8, k_len=16, q_lengths=QL, causal=True,
                                    window=(4, 0), dtype=torch.float16)
        return keep, am, maskext.mask_to_lengths(keep)

    L = rand_lengths(3, 16, device=device, over=False)
    QL = rand_lengths(3, 8, device=device)
    got = torch.compile(build, fullgraph=True)(L, QL)
    want = build(L, QL)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# Row lengths that are and are not a multiple of 16 bytes for each dtype: on
# CUDA the first get a warp per row with 128-bit splat stores, the others the
# flat kernel whose chunks cross rows, or, 32 chunks long or more, the rows
# kernel with an unaligned head and tail (1000 bool, 1001 float16).
@pytest.mark.parametrize("cols", [16, 24, 48, 64, 100, 256, 1000, 1001])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float16, torch.float32, torch.float64,
                                   torch.int64])
def test_masks_rows_aligned_or_not(device, cols, dtype):
    L = rand_lengths(6, cols, device=device, over=True)
    torch.testing.assert_close(maskext.lengths_to_mask(L, cols, dtype=dtype),
                               R.lengths_to_mask(L, cols, dtype=dtype))
    torch.testing.assert_close(maskext.lengths_to_mask(L, cols, left_pad=True, dtype=dtype),
                               R.lengths_to_mask(L, cols, left_pad=True, dtype=dtype))
    if dtype in (torch.bool, torch.float16, torch.float32):
        for kw in (dict(causal=True), dict(window=(5, 2)), dict(q_lengths=L.flip(0))):
            got = maskext.attention_mask(L, q_len=7, k_len=cols, dtype=dtype, **kw)
            want = R.attention_mask(L, q_len=7, k_len=cols, dtype=dtype, **kw)
            torch.testing.assert_close(got, want)


# More rows than the GPU's resident warps: the CUDA rows kernel writes R rows
# per warp (rows_per_warp in csrc/cuda/masks.cu: rows / resident warps, at
# most 32, then a grid-stride loop), rows of fewer 16-byte chunks than lanes
# spread over the warp's rows, longer ones row after row. The kernel's
# registers allow 51 resident warps per SM (of 64): at least per_warp rows per warp.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("per_warp,cols,dtype", [
    (2, 16, torch.bool), (2, 512, torch.bool), (5, 80, torch.bool), (5, 264, torch.float16),
    (32, 16, torch.bool), (64, 24, torch.float16), (3, 1000, torch.bool), (2, 777, torch.float16)])
def test_cuda_mask_rows_per_warp(per_warp, cols, dtype):
    warps = torch.cuda.get_device_properties(0).multi_processor_count * 64
    Tq = 97
    B = -(-((per_warp - 1) * warps + 1) // Tq)
    L = rand_lengths(B, cols, device="cuda")
    QL = rand_lengths(B, Tq, device="cuda")
    for kw in (dict(causal=True), dict(window=(5, 2), q_lengths=QL), dict()):
        got = maskext.attention_mask(L, q_len=Tq, k_len=cols, dtype=dtype, **kw)
        want = R.attention_mask(L, q_len=Tq, k_len=cols, dtype=dtype, **kw)
        torch.testing.assert_close(got, want)
