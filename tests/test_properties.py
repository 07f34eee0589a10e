"""Property-based tests (hypothesis) of every op against maskext.reference:
random shapes (0 and 1 included), dtypes, views with offsets and strides,
every mask kind combined, lengths of 0 and beyond the row, NaN and +-inf
scores. CPU always, CUDA when present. The example budget is fixed and the
examples derandomized, so CI time and outcome do not vary from run to run."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

import maskext  # noqa: E402
from maskext import reference as R  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
]


def budget(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (atol, rtol) against the float64 reference: about one rounding of the output
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5),
       torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}


# ---------------------------------------------------------------- strategies

def _lengths(draw, B, T):
    """(B,) int32/int64 lengths in [0, T + 3] (0, full and past the row), sometimes strided."""
    values = draw(st.lists(st.integers(0, T + 3), min_size=B, max_size=B))
    L = torch.tensor(values, dtype=draw(st.sampled_from([torch.int64, torch.int32]))).reshape(B)
    if draw(st.booleans()):
        L = torch.stack([L, L], 1)[:, 1]  # a strided view
    return L


def _window_side(draw, T):
    return draw(st.one_of(st.none(), st.integers(0, T + 2), st.just(2**62)))


def _int_or_batch(draw, B, lo, hi):
    """An int in [lo, hi] or a (B,) int32/int64 tensor of such values."""
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    values = draw(st.lists(st.integers(lo, hi), min_size=B, max_size=B))
    return torch.tensor(values, dtype=draw(st.sampled_from([torch.int64, torch.int32]))).reshape(B)


def _kinds(draw, B, Tq, Tk, gen, kw):
    """Adds to kw some of the issue-12 kinds: q_offset, segment_ids, chunk,
    prefix_lengths (a prefix never with a left-bounded window or a chunk: an error)."""
    if draw(st.booleans()):
        kw["q_offset"] = _int_or_batch(draw, B, -3, Tk + 3)
    if draw(st.booleans()):
        ids = (torch.rand(B, Tk, generator=gen) < draw(st.sampled_from([0.2, 0.5]))).cumsum(-1)
        kw["segment_ids"] = ids.to(draw(st.sampled_from([torch.int64, torch.int32])))
    if draw(st.booleans()):
        kw["chunk"] = draw(st.integers(1, 4))
    elif draw(st.booleans()):
        kw["prefix_lengths"] = _int_or_batch(draw, B, 0, Tk + 2)
        if kw.get("window") is not None:
            kw["window"] = (None, kw["window"][1])


def _broadcast_shape(draw, shape):
    """A shape that broadcasts to `shape`: some dims 1, some leading dims dropped."""
    full = tuple(d if draw(st.booleans()) else 1 for d in shape)
    return full[draw(st.integers(0, len(shape))):]


def _tensor(draw, shape, dtype, gen, scale=3.0):
    """randn * scale in `dtype`, as a contiguous tensor or as a view of a larger
    one (odd offset, transposed, strided)."""
    layout = draw(st.sampled_from(["contiguous", "offset", "transposed", "strided"]))
    make = lambda s: (torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if layout == "offset" and len(shape) >= 1:
        return make(shape[:-1] + (shape[-1] + 3,))[..., 3:]
    if layout == "transposed" and len(shape) >= 2:
        return make(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    if layout == "strided" and len(shape) >= 1:
        return make(shape[:-1] + (2 * shape[-1],))[..., ::2]
    return make(shape)


def _poke(draw, x, values):
    """Writes one of `values` (or nothing) at a drawn position of x (a view: written through)."""
    v = draw(st.sampled_from([None, None, None] + values))
    if v is None or x.numel() == 0:
        return None
    pos = draw(st.integers(0, x.numel() - 1))
    x[torch.unravel_index(torch.tensor(pos), x.shape)] = v
    return v


@st.composite
def softmax_cases(draw):
    nd = draw(st.sampled_from([2, 3, 4, 5]))
    B, Tk = draw(st.integers(0, 3)), draw(st.integers(0, 9))
    Tq = draw(st.integers(0, 5))
    shape = (B, Tk) if nd == 2 else (B,) + tuple(draw(st.integers(1, 2)) for _ in range(nd - 3)) + (Tq, Tk)
    dtype = draw(st.sampled_from(FLOATS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = _tensor(draw, shape, dtype, gen)
    special = _poke(draw, x, [float("nan"), float("inf"), float("-inf"), 1e4])
    kw = {}
    if draw(st.booleans()):
        kw["lengths"] = _lengths(draw, B, Tk)
    if nd > 2:
        if draw(st.booleans()):
            kw["q_lengths"] = _lengths(draw, B, Tq)
        kw["causal"] = draw(st.booleans())
        if draw(st.booleans()):
            kw["window"] = (_window_side(draw, Tk), _window_side(draw, Tk))
        _kinds(draw, B, Tq, Tk, gen, kw)
    if draw(st.booleans()):
        kw["mask"] = torch.rand(_broadcast_shape(draw, shape), generator=gen) > 0.3
    if draw(st.booleans()):
        bias = _tensor(draw, _broadcast_shape(draw, shape), dtype, gen, scale=1.0)
        if bias.numel():
            bias[torch.rand(bias.shape, generator=gen) < 0.2] = draw(
                st.sampled_from([float("-inf"), torch.finfo(dtype).min]))
        special = _poke(draw, bias, [float("nan")]) or special  # a NaN bias is a NaN score
        kw["bias"] = bias
    if draw(st.booleans()):
        kw["scale"] = draw(st.sampled_from([0.5, 1.7, -1.0]))
    if draw(st.booleans()):
        kw["softcap"] = draw(st.sampled_from([0.7, 5.0, 30.0]))
    if draw(st.booleans()):  # sinks: any float dtype, NaN/+inf poison the row, -inf is none
        sinks = _tensor(draw, _broadcast_shape(draw, shape[:-1]), draw(st.sampled_from(FLOATS)),
                        gen)
        special = _poke(draw, sinks, [float("nan"), float("inf"), float("-inf")]) or special
        kw["sinks"] = sinks
    return x, kw, special


def _to(kw, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


# ---------------------------------------------------------------- masked softmax

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["masked_softmax", "masked_log_softmax"])
@budget(150)
@given(case=softmax_cases(), grad_seed=st.integers(0, 2**31 - 1))
def test_softmax_matches_reference(device, name, case, grad_seed):
    x, kw, special = case
    x, kw = x.to(device), _to(kw, device)
    ours, ref = getattr(maskext, name), getattr(R, name)
    got, want = ours(x, **kw), ref(x, **kw)
    assert got.shape == x.shape and got.dtype == x.dtype and got.is_contiguous()
    atol, rtol = TOL[x.dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=True)
    if special is None and x.dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(grad_seed)
        dy = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
        leaves = [x.detach().requires_grad_()]
        for name in ("bias", "sinks"):
            if kw.get(name) is not None:
                kw[name] = kw[name].detach().requires_grad_()
                leaves.append(kw[name])
        got = torch.autograd.grad(ours(leaves[0], **kw), leaves, dy)
        want = torch.autograd.grad(ref(leaves[0], **kw), leaves, dy)
        for g, w, leaf in zip(got, want, leaves):
            atol, rtol = max(TOL[leaf.dtype], TOL[x.dtype])  # computed in x's precision
            torch.testing.assert_close(g, w, atol=10 * atol, rtol=10 * rtol)


# ---------------------------------------------------------------- masks

@st.composite
def lengths_and_sizes(draw):
    B, T = draw(st.integers(0, 4)), draw(st.integers(0, 9))
    return _lengths(draw, B, T), T


@pytest.mark.parametrize("device", DEVICES)
@budget(60)
@given(case=lengths_and_sizes(), explicit=st.booleans(), left_pad=st.booleans(),
       dtype=st.sampled_from([torch.bool, torch.float32, torch.int64, torch.uint8]))
def test_lengths_to_mask_matches_reference(device, case, explicit, left_pad, dtype):
    L, T = case
    L = L.to(device)
    max_len = T if explicit else None
    got = maskext.lengths_to_mask(L, max_len, left_pad=left_pad, dtype=dtype)
    assert torch.equal(got, R.lengths_to_mask(L, max_len, left_pad=left_pad, dtype=dtype))
    assert torch.equal(maskext.lengths_to_padding_mask(L, max_len, left_pad=left_pad),
                       R.lengths_to_padding_mask(L, max_len, left_pad=left_pad))


@pytest.mark.parametrize("device", DEVICES)
@budget(80)
@given(data=st.data(), q_len=st.integers(0, 6), k_len=st.integers(0, 9),
       dtype=st.sampled_from([torch.bool, torch.float32, torch.float16, torch.bfloat16]))
def test_attention_mask_matches_reference(device, data, q_len, k_len, dtype):
    B = data.draw(st.integers(0, 3))
    kw = dict(causal=data.draw(st.booleans()))
    if data.draw(st.booleans()):
        kw["lengths"] = _lengths(data.draw, B, k_len).to(device)
    if data.draw(st.booleans()):
        kw["q_lengths"] = _lengths(data.draw, B, q_len).to(device)
    if data.draw(st.booleans()):
        kw["window"] = (_window_side(data.draw, k_len), _window_side(data.draw, k_len))
    # _kinds sees the window: it drops the window's left side when it adds a prefix
    # (found on the GPU run of 2026-11-26: a prefix with window left 2**62 here).
    kinds = {"window": kw["window"]} if "window" in kw else {}
    _kinds(data.draw, B, q_len, k_len, torch.Generator().manual_seed(q_len * 10 + k_len), kinds)
    kw.update(_to(kinds, device))
    got = maskext.attention_mask(q_len=q_len, k_len=k_len, dtype=dtype, device=device, **kw)
    want = R.attention_mask(q_len=q_len, k_len=k_len, dtype=dtype, device=device, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@budget(50)
@given(data=st.data(), B=st.integers(0, 4), T=st.integers(0, 9), seed=st.integers(0, 2**31 - 1))
def test_mask_to_lengths_matches_reference(device, data, B, T, seed):
    keep = _tensor(data.draw, (B, T), torch.float32, torch.Generator().manual_seed(seed)) > 0
    keep = keep.to(device)
    assert torch.equal(maskext.mask_to_lengths(keep), R.mask_to_lengths(keep))


@pytest.mark.parametrize("device", DEVICES)
@budget(60)
@given(data=st.data(), B=st.integers(0, 3), T=st.integers(0, 7), F=st.integers(0, 3),
       dim=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.int64, torch.float32, torch.uint8, torch.bool]))
def test_lengths_from_padded_matches_reference(device, data, B, T, F, dim, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (B, T, F), generator=gen)
    x = (x * (torch.rand(B, T, 1, generator=gen) < 0.6)).to(dtype)  # some all-pad steps
    if dim == 2:
        x = x.transpose(1, 2)  # time along dim 2, a non-contiguous view
    x = x.to(device)
    assert torch.equal(maskext.lengths_from_padded(x, 0, dim=dim), R.lengths_from_padded(x, 0, dim=dim))


# ---------------------------------------------------------------- padded data

@st.composite
def padded_cases(draw, dtypes):
    nd = draw(st.integers(2, 4))
    shape = (draw(st.integers(0, 3)),) + tuple(draw(st.integers(0, 5)) for _ in range(nd - 1))
    dim = draw(st.integers(1, nd - 1))
    dtype = draw(st.sampled_from(dtypes))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = _tensor(draw, shape, torch.float64, gen)
    if dtype.is_floating_point:
        x = x.to(dtype)
        special = _poke(draw, x, [float("nan"), float("inf"), float("-inf")])
    else:
        x = x.round().to(dtype) if dtype != torch.bool else x > 0
        special = None
    L = _lengths(draw, shape[0], shape[dim])
    dim = dim - nd if draw(st.booleans()) else dim  # negative dims too
    return x, L, dim, special


@pytest.mark.parametrize("device", DEVICES)
@budget(100)
@given(case=padded_cases([torch.float32, torch.float16, torch.bfloat16, torch.float64,
                          torch.int64, torch.uint8, torch.bool]),
       left_pad=st.booleans(), nan_value=st.booleans())
def test_fill_padding_matches_reference(device, case, left_pad, nan_value):
    x, L, dim, _ = case
    x, L = x.to(device), L.to(device)
    value = {torch.bool: True, torch.int64: -3, torch.uint8: 7}.get(
        x.dtype, float("nan") if nan_value else -7.5)
    want = R.fill_padding(x, L, value, dim=dim, left_pad=left_pad)
    got = maskext.fill_padding(x, L, value, dim=dim, left_pad=left_pad)
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    y = x.clone()
    assert maskext.fill_padding_(y, L, value, dim=dim, left_pad=left_pad) is y
    torch.testing.assert_close(y, want, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@budget(60)
@given(case=padded_cases(FLOATS), keepdim=st.booleans())
def test_pooling_matches_reference(device, name, case, keepdim):
    x, L, dim, special = case
    x, L = x.to(device), L.to(device)
    ours, ref = getattr(maskext, f"masked_{name}"), getattr(R, f"masked_{name}")
    got = ours(x, L, dim=dim, keepdim=keepdim)
    want = ref(x.double(), L, dim=dim, keepdim=keepdim).to(x.dtype)
    atol, rtol = TOL[x.dtype]
    torch.testing.assert_close(got, want, atol=5 * atol, rtol=2 * rtol, equal_nan=True)
    if x.dtype == torch.float64 and special is None:
        xr = x.detach().requires_grad_()
        dy = torch.randn_like(got)
        (g,) = torch.autograd.grad(ours(xr, L, dim=dim, keepdim=keepdim), xr, dy)
        (w,) = torch.autograd.grad(ref(xr, L, dim=dim, keepdim=keepdim), xr, dy)
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- soft masks

@st.composite
def gate_cases(draw):
    nd = draw(st.integers(2, 4))
    shape = (draw(st.integers(0, 3)), draw(st.integers(0, 6))) + tuple(
        draw(st.integers(1, 3)) for _ in range(nd - 2))
    dtype = draw(st.sampled_from(FLOATS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits, x = _tensor(draw, shape, dtype, gen), _tensor(draw, shape, dtype, gen, scale=1.0)
    L = _lengths(draw, shape[0], shape[1]) if draw(st.booleans()) else None
    return logits, x, L


@pytest.mark.parametrize("device", DEVICES)
@budget(80)
@given(case=gate_cases(), temperature=st.sampled_from([0.3, 1.0, 2.5]), hard=st.booleans())
def test_soft_mask_and_gate_match_reference(device, case, temperature, hard):
    logits, x, L = (t.to(device) if t is not None else None for t in case)
    atol, rtol = TOL[x.dtype]
    kw = dict(temperature=temperature, hard=hard)
    for got, want in ((maskext.soft_mask(logits, L, **kw), R.soft_mask(logits.double(), L, **kw)),
                      (maskext.sigmoid_gate(x, logits, L, **kw),
                       R.sigmoid_gate(x.double(), logits.double(), L, **kw))):
        torch.testing.assert_close(got, want.to(x.dtype), atol=atol, rtol=rtol)
    if x.dtype == torch.float64 and not hard:  # hard is straight-through: not the reference's
        xr, zr = x.detach().requires_grad_(), logits.detach().requires_grad_()
        dy = torch.randn_like(x)
        got = torch.autograd.grad(maskext.sigmoid_gate(xr, zr, L, **kw), (xr, zr), dy)
        want = torch.autograd.grad(R.sigmoid_gate(xr, zr, L, **kw), (xr, zr), dy)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
