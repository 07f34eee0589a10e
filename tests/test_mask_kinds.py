"""The mask kinds of issue 12 (q_offset, segment_ids, chunk, prefix_lengths) in
every op that takes a mask description: masked_softmax, masked_log_softmax
(forward, backward, double backward), nn.MaskedSoftmax and attention_mask,
against maskext.reference and against each other."""
import itertools

import pytest
import torch

import maskext
from maskext import reference as R

f64 = torch.float64


def rand_segments(B, Tk, device, dtype=torch.int64, gen=None):
    """(B, Tk) non-decreasing ids: packed documents of random lengths (some of 1)."""
    starts = torch.rand(B, Tk, generator=gen) < 0.3
    return (starts.cumsum(-1) + 5).to(dtype).to(device)


def kinds_cases(B, Tq, Tk, device):
    """Every kind alone and combined with the others (prefix only where it stays
    one interval), ints and tensors."""
    qo_t = torch.randint(-3, Tk + 3, (B,), device=device)
    seg = rand_segments(B, Tk, device)
    pre_t = torch.randint(0, Tk + 2, (B,), device=device, dtype=torch.int32)
    q_offsets = [None, 0, Tk - 1, -2, qo_t]
    segs = [None, seg]
    chunks = [None, 1, 3]
    prefixes = [None, 2, pre_t]
    for q_offset, segment_ids, chunk, prefix in itertools.product(q_offsets, segs, chunks,
                                                                   prefixes):
        if chunk is not None and prefix is not None:
            continue
        yield dict(q_offset=q_offset, segment_ids=segment_ids, chunk=chunk,
                   prefix_lengths=prefix)


def _drop_none(kw):
    return {k: v for k, v in kw.items() if v is not None}


def _close(got, want, dtype):
    tol = {f64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("Tq,Tk", [(4, 4), (3, 9), (6, 5)])
def test_kinds_softmax_and_attention_mask(device, Tq, Tk):
    """Each kind and combination, with lengths / q_lengths / causal / window /
    mask / bias: softmax and log-softmax match the reference; attention_mask is
    the reference's visibility and exactly where the softmax is > 0."""
    B = 3
    x = torch.randn(B, 2, Tq, Tk, device=device, dtype=f64) * 2
    L = torch.tensor([Tk, 0, Tk - 2], device=device)
    QL = torch.tensor([Tq, Tq - 1, 1], device=device, dtype=torch.int32)
    mask = torch.rand(B, 1, Tq, Tk, device=device) > 0.3
    bias = torch.randn(1, 2, 1, Tk, device=device, dtype=f64)
    others = [dict(), dict(lengths=L, q_lengths=QL), dict(causal=True), dict(window=(1, 2)),
              dict(causal=True, window=(None, 1), lengths=L), dict(mask=mask, bias=bias)]
    n = 0
    for kinds in kinds_cases(B, Tq, Tk, device):
        for other in others:
            kw = _drop_none({**kinds, **other})
            if "prefix_lengths" in kw and kw.get("window", (None,))[0] is not None:
                continue
            n += 1
            for fn in ("masked_softmax", "masked_log_softmax"):
                _close(getattr(maskext, fn)(x, **kw), getattr(R, fn)(x, **kw), f64)
            kw.pop("mask", None), kw.pop("bias", None)
            am = maskext.attention_mask(q_len=Tq, k_len=Tk, device=device, **kw)
            ref = R.attention_mask(q_len=Tq, k_len=Tk, device=device, **kw)
            assert torch.equal(am.expand(B, 1, Tq, Tk), ref.expand(B, 1, Tq, Tk)), kw
            assert torch.equal(maskext.masked_softmax(x, **kw) > 0, am.expand(B, 2, Tq, Tk)), kw
    assert n > 250


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kinds_low_precision(device, dtype):
    B, Tq, Tk = 3, 5, 97
    x = (torch.randn(B, 2, Tq, Tk, device=device) * 3).to(dtype)
    seg = rand_segments(B, Tk, device, torch.int32)
    cases = [dict(q_offset=40, causal=True), dict(segment_ids=seg, causal=True),
             dict(chunk=16, causal=True, lengths=torch.tensor([97, 50, 3], device=device)),
             dict(prefix_lengths=torch.tensor([10, 0, 96], device=device), causal=True),
             dict(q_offset=torch.tensor([0, 50, 92], device=device), segment_ids=seg, chunk=32,
                  window=(8, 0), bias=torch.randn(Tq, Tk, device=device).to(dtype))]
    for kw in cases:
        for fn in ("masked_softmax", "masked_log_softmax"):
            got, want = getattr(maskext, fn)(x, **kw), getattr(R, fn)(x, **kw)
            vis = R.masked_softmax(x.double(), **kw) > 0
            _close(got[vis], want[vis], dtype)
            assert torch.equal(got[~vis], want[~vis])


def test_kinds_backward_matches_reference(device):
    B, Tq, Tk = 3, 6, 11
    x = torch.randn(B, 2, Tq, Tk, device=device, dtype=f64, requires_grad=True)
    bias = torch.randn(Tq, Tk, device=device, dtype=f64, requires_grad=True)
    dy = torch.randn(B, 2, Tq, Tk, device=device, dtype=f64)
    seg = rand_segments(B, Tk, device)
    for kw in (dict(q_offset=torch.tensor([0, 3, 7], device=device), causal=True, segment_ids=seg),
               dict(chunk=4, causal=True, lengths=torch.tensor([11, 5, 0], device=device)),
               dict(prefix_lengths=3, causal=True, q_offset=2),
               dict(prefix_lengths=torch.tensor([0, 4, 11], device=device), segment_ids=seg,
                    window=(None, 1))):
        for fn in ("masked_softmax", "masked_log_softmax"):
            got = torch.autograd.grad(getattr(maskext, fn)(x, bias=bias, **kw), (x, bias), dy)
            want = torch.autograd.grad(getattr(R, fn)(x, bias=bias, **kw), (x, bias), dy)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)


@pytest.mark.parametrize("fn", [maskext.masked_softmax, maskext.masked_log_softmax],
                         ids=["softmax", "log_softmax"])
def test_kinds_gradgradcheck(device, fn):
    """The double backward materialises visibility through attention_mask with
    the same kinds: second-order gradients are exact."""
    seg = torch.tensor([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5]], device=device)
    kw = dict(q_offset=torch.tensor([2, 0, 1], device=device), segment_ids=seg, causal=True,
              prefix_lengths=torch.tensor([1, 0, 6], device=device))
    x = torch.randn(3, 2, 4, 6, device=device, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, **kw), (x,))
    assert torch.autograd.gradgradcheck(lambda x: fn(x, **kw), (x,))
    kw = dict(chunk=2, q_offset=1, window=(3, 0))
    assert torch.autograd.gradgradcheck(lambda x: fn(x, **kw), (x,))


def test_semantics_examples():
    """The issue's definitions on small hand-checked cases."""
    # static KV cache: 2 queries at positions 3 and 4 of a 8-key cache
    m = maskext.attention_mask(q_len=2, k_len=8, causal=True, q_offset=3)[0, 0]
    assert m.sum(-1).tolist() == [4, 5]
    # packed documents [0 0 0 | 1 1 | 2]: block-diagonal causal
    seg = torch.tensor([[0, 0, 0, 1, 1, 2]])
    m = maskext.attention_mask(q_len=6, k_len=6, causal=True, segment_ids=seg)[0, 0]
    want = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]).bool()
    assert torch.equal(m, want)
    # a query outside [0, Tk) sees nothing with segment_ids
    assert not maskext.attention_mask(q_len=2, k_len=6, segment_ids=seg, q_offset=5)[0, 0, 1].any()
    # chunked attention, chunk 2: keys of the query's own chunk
    m = maskext.attention_mask(q_len=5, k_len=5, chunk=2)[0, 0]
    assert m.int().tolist()[3] == [0, 0, 1, 1, 0] and m.int().tolist()[4] == [0, 0, 0, 0, 1]
    # prefix-LM: the first 3 keys are visible to every query, causal after them
    m = maskext.attention_mask(q_len=5, k_len=5, causal=True, prefix_lengths=3)[0, 0]
    assert m.sum(-1).tolist() == [3, 3, 3, 4, 5]


def test_module_with_kinds(device):
    sm = maskext.nn.MaskedSoftmax(causal=True, chunk=3, scale=0.5)
    x = torch.randn(2, 2, 5, 7, device=device)
    seg = rand_segments(2, 7, device)
    kw = dict(q_offset=torch.tensor([1, 2], device=device), segment_ids=seg)
    torch.testing.assert_close(sm(x, **kw), maskext.masked_softmax(x, causal=True, chunk=3,
                                                                   scale=0.5, **kw))
    assert "chunk=3" in repr(sm)
    sm = maskext.nn.MaskedSoftmax(causal=True)
    torch.testing.assert_close(sm(x, prefix_lengths=2),
                               R.masked_softmax(x, causal=True, prefix_lengths=2))


def test_kinds_errors(device):
    x = torch.randn(4, 2, 3, 5, device=device)
    seg = torch.zeros(4, 5, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match=r"masked_softmax: q_offset must have shape \[B\] with B = x.size\(0\) = 4, got \[3\]"):
        maskext.masked_softmax(x, q_offset=torch.tensor([1, 2, 3], device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: q_offset must be an integer tensor \(int32 or int64\), got Float"):
        maskext.masked_softmax(x, q_offset=torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: segment_ids must have shape \[B, Tk\] with B = x.size\(0\) = 4 and Tk = x.size\(-1\) = 5, got \[4, 4\]"):
        maskext.masked_softmax(x, segment_ids=seg[:, :4])
    with pytest.raises(RuntimeError, match=r"masked_log_softmax: prefix_lengths cannot be combined with a left-bounded window or a chunk \(the visible keys could be two intervals\), got window left = 2, chunk = 0"):
        maskext.masked_log_softmax(x, prefix_lengths=2, window=(2, 0))
    with pytest.raises(RuntimeError, match=r"attention_mask: prefix_lengths cannot be combined with a left-bounded window or a chunk .* chunk = 4"):
        maskext.attention_mask(q_len=3, k_len=5, prefix_lengths=torch.tensor([1]), chunk=4)
    with pytest.raises(ValueError, match=r"masked_softmax: chunk must be an int > 0 or None, got 0"):
        maskext.masked_softmax(x, chunk=0)
    with pytest.raises(ValueError, match=r"masked_softmax: prefix_lengths must be an int >= 0 or a \(B,\) integer tensor, got -1"):
        maskext.masked_softmax(x, prefix_lengths=-1)
    with pytest.raises(ValueError, match=r"masked_softmax: q_offset must be an int or a \(B,\) integer tensor, got 1.5"):
        maskext.masked_softmax(x, q_offset=1.5)
    with pytest.raises(RuntimeError, match=r"masked_softmax: causal, window, q_lengths, q_offset, segment_ids, chunk and prefix_lengths need a query dim"):
        maskext.masked_softmax(x[:, 0, 0], chunk=2)
    with pytest.raises(RuntimeError, match=r"attention_mask: segment_ids must have shape \[B, Tk\] with B = lengths.size\(0\) = 4 and Tk = k_len = 6, got \[4, 5\]"):
        maskext.attention_mask(q_len=3, k_len=6, segment_ids=seg)
    if device == "cpu":
        bad = torch.tensor([[0, 0, 1, 0, 2]] * 4)
        with pytest.raises(RuntimeError, match=r"masked_softmax: segment_ids must be non-decreasing along the keys, got 1 then 0 at \[0, 2:4\]"):
            maskext.masked_softmax(x, segment_ids=bad)
        with pytest.raises(RuntimeError, match=r"masked_softmax: prefix_lengths must be >= 0, got a value of -1"):
            maskext.masked_softmax(x, prefix_lengths=torch.tensor([0, 1, -1, 2]))


def test_huge_offsets_stay_in_bounds(device):
    x = torch.randn(3, 1, 4, 9, device=device)
    qo = torch.tensor([2**62, -(2**62), 5], device=device)
    for kw in (dict(q_offset=qo, causal=True), dict(q_offset=qo, window=(2**62, 2**62)),
               dict(q_offset=qo, chunk=2**62), dict(q_offset=2**62, window=(1, None))):
        y = maskext.masked_softmax(x, **kw)
        am = maskext.attention_mask(q_len=4, k_len=9, device=device, **kw)
        assert torch.equal(y > 0, am.expand_as(y))
    am = maskext.attention_mask(q_len=4, k_len=9, q_offset=qo, causal=True)
    assert am[0].all() and not am[1].any()


def test_kinds_opcheck_and_compile(device):
    ops = torch.ops.maskext
    x = torch.randn(3, 2, 5, 7, device=device, requires_grad=True)
    L = torch.tensor([7, 0, 3], device=device)
    seg = rand_segments(3, 7, device)
    qo = torch.tensor([0, 2, -1], device=device)
    pre = torch.tensor([1, 0, 7], device=device, dtype=torch.int32)
    bias = torch.randn(1, 2, 1, 7, device=device, requires_grad=True)
    for op in (ops.masked_softmax, ops.masked_log_softmax):
        torch.library.opcheck(op, (x, None, bias, L, None, True, -1, 1, 0.5, qo, None, seg, 0,
                                   pre, 0))
    torch.library.opcheck(ops.masked_softmax, (x, None, None, None, None, False, 2, -1, 1.0, None,
                                               3, None, 2, None, 0))
    y = maskext.masked_softmax(x.detach(), lengths=L, segment_ids=seg)
    torch.library.opcheck(ops.masked_softmax_backward,
                          (torch.randn_like(y), y, L, None, True, -1, -1, 0.5, qo, None, seg, 0,
                           pre, 0))
    torch.library.opcheck(ops.attention_mask, (L, None, 5, 7, True, -1, -1, torch.bool, None, 4,
                                               seg, 0, None, 2))

    def f(x, bias, qo, seg):
        return maskext.masked_softmax(x, causal=True, bias=bias, q_offset=qo, segment_ids=seg,
                                      prefix_lengths=1) * 2

    dy = torch.randn_like(x)
    y = torch.compile(f, fullgraph=True)(x, bias, qo, seg)
    got = torch.autograd.grad(y, (x, bias), dy)
    y2 = f(x, bias, qo, seg)
    want = torch.autograd.grad(y2, (x, bias), dy)
    torch.testing.assert_close(y, y2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- MaskSpec

def test_mask_spec_is_accepted_everywhere(device):
    B, Tq, Tk = 3, 4, 9
    x = torch.randn(B, 2, Tq, Tk, device=device, dtype=f64, requires_grad=True)
    fields = dict(lengths=torch.tensor([9, 5, 0], device=device),
                  q_lengths=torch.tensor([4, 2, 3], device=device), causal=True, window=[None, 1],
                  q_offset=torch.tensor([2, 5, 0], device=device),
                  segment_ids=rand_segments(B, Tk, device), prefix_lengths=2)
    spec = maskext.MaskSpec(**fields)
    assert spec.window == (None, 1)
    for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
        y, want = fn(x, spec=spec, scale=0.5), fn(x, scale=0.5, **fields)
        assert torch.equal(y, want)
        dy = torch.randn_like(y)
        assert torch.equal(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(want, x, dy)[0])
    assert torch.equal(maskext.attention_mask(q_len=Tq, k_len=Tk, spec=spec),
                       maskext.attention_mask(q_len=Tq, k_len=Tk, **fields))
    assert torch.equal(maskext.nn.MaskedSoftmax()(x, spec=spec), maskext.masked_softmax(x, **fields))
    chunked = spec.replace(chunk=3, prefix_lengths=None)
    assert chunked.chunk == 3 and spec.chunk is None
    torch.testing.assert_close(maskext.masked_softmax(x, spec=chunked),
                               R.masked_softmax(x, **{**fields, "chunk": 3, "prefix_lengths": None}))
    with pytest.raises(Exception):
        spec.causal = False  # frozen

    def f(x):
        return maskext.masked_softmax(x, spec=spec) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


def test_mask_spec_errors():
    x = torch.randn(2, 1, 3, 4)
    spec = maskext.MaskSpec(causal=True)
    with pytest.raises(ValueError, match=r"masked_softmax: give the mask description as spec= or as keywords, not both \(got spec and lengths, chunk\)"):
        maskext.masked_softmax(x, spec=spec, lengths=torch.tensor([1, 2]), chunk=2)
    with pytest.raises(TypeError, match=r"attention_mask: spec must be a maskext.MaskSpec, got dict"):
        maskext.attention_mask(q_len=3, k_len=4, spec={"causal": True})
    with pytest.raises(ValueError, match=r"MaskSpec: chunk must be an int > 0 or None, got -1"):
        maskext.MaskSpec(chunk=-1)
    with pytest.raises(ValueError, match=r"MaskSpec: window must be a \(left, right\) pair"):
        maskext.MaskSpec(window=3)
    with pytest.raises(ValueError, match=r"masked_softmax: give the mask description as spec= or as keywords, not both \(got spec and causal\)"):
        maskext.nn.MaskedSoftmax(causal=True)(x, spec=spec)


# ---------------------------------------------------------------- softcap

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, f64])
@pytest.mark.parametrize("Tk", [7, 97, 1025])
def test_softcap_matches_reference(device, dtype, Tk):
    B, Tq = 3, 4
    x = (torch.randn(B, 2, Tq, Tk, device=device) * 20).to(dtype)
    x[0, 0, 0, 0], x[0, 1, 0, 1] = float("inf"), float("-inf")  # capped: +-softcap, finite
    L = torch.tensor([Tk, 2, Tk - 3], device=device)
    seg = rand_segments(B, Tk, device)
    cases = [dict(), dict(lengths=L, causal=True, scale=0.5),
             dict(mask=torch.rand(B, 1, Tq, Tk, device=device) > 0.3,
                  bias=torch.randn(Tq, Tk, device=device).to(dtype), window=(3, 2)),
             dict(segment_ids=seg, q_offset=torch.tensor([0, 3, Tk - 4], device=device),
                  causal=True, prefix_lengths=1, scale=-1.5)]
    for kw in cases:
        for softcap in (1.0, 30.0):
            for fn in ("masked_softmax", "masked_log_softmax"):
                got = getattr(maskext, fn)(x, softcap=softcap, **kw)
                want = getattr(R, fn)(x, softcap=softcap, **kw)
                vis = R.masked_softmax(x.double(), softcap=softcap, **kw) > 0  # fp64: no underflow
                assert not got.isnan().any()
                _close(got[vis], want[vis], dtype)
                assert torch.equal(got[~vis], want[~vis])


@pytest.mark.parametrize("fn", [maskext.masked_softmax, maskext.masked_log_softmax],
                         ids=["softmax", "log_softmax"])
def test_softcap_gradchecks(device, fn):
    x = (torch.randn(3, 2, 4, 6, device=device, dtype=f64) * 3).requires_grad_()
    bias = torch.randn(1, 2, 4, 6, device=device, dtype=f64, requires_grad=True)
    kw = dict(mask=torch.rand(3, 1, 4, 6, device=device) > 0.2, softcap=2.5, scale=0.7,
              lengths=torch.tensor([6, 3, 0], device=device), causal=True,
              segment_ids=torch.tensor([[0, 0, 1, 1, 1, 1]] * 3, device=device))
    assert torch.autograd.gradcheck(lambda x, b: fn(x, bias=b, **kw), (x, bias))
    assert torch.autograd.gradgradcheck(lambda x, b: fn(x, bias=b, **kw), (x, bias))
    assert torch.autograd.gradcheck(lambda x: fn(x, **kw), (x,))
    dy = torch.randn_like(x)
    for leaves in ((x,), (x, bias)):
        b = bias if len(leaves) == 2 else None
        got = torch.autograd.grad(fn(x, bias=b, **kw), leaves, dy)
        want = torch.autograd.grad(getattr(R, fn.__name__)(x, bias=b, **kw), leaves, dy)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


def test_softcap_errors_opcheck_compile(device):
    x = torch.randn(3, 2, 5, 7, device=device, requires_grad=True)
    for bad in (0.0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match=r"masked_softmax: softcap must be a finite float > 0 or None"):
            maskext.masked_softmax(x, softcap=bad)
    with pytest.raises(RuntimeError, match=r"masked_log_softmax: softcap must be > 0 \(or 0 for none\), got -2"):
        torch.ops.maskext.masked_log_softmax(x, None, None, None, None, False, -1, -1, 1.0,
                                             softcap=-2.0)
    L = torch.tensor([7, 0, 3], device=device)
    bias = torch.randn(1, 2, 1, 7, device=device, requires_grad=True)
    for op in (torch.ops.maskext.masked_softmax, torch.ops.maskext.masked_log_softmax):
        torch.library.opcheck(op, (x, None, bias, L, None, True, -1, -1, 0.5, None, None, None, 0,
                                   None, 0, 3.0))

    def f(x, bias):
        return maskext.masked_softmax(x, lengths=L, causal=True, bias=bias, softcap=3.0) * 2

    dy = torch.randn_like(x)
    y = torch.compile(f, fullgraph=True)(x, bias)
    got = torch.autograd.grad(y, (x, bias), dy)
    want = torch.autograd.grad(f(x, bias), (x, bias), dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- sinks

def _gpt_oss_eager(x, bias, sinks, scale):
    """gpt-oss's eager attention probabilities: the sink logit concatenated to
    every row of the (additively masked) scores, its probability dropped."""
    z = x * scale + bias
    s = sinks.reshape(1, -1, 1, 1).expand(z.shape[0], -1, z.shape[2], 1)
    z = torch.cat([z, s], -1)
    z = z - z.max(-1, keepdim=True).values
    return torch.softmax(z, -1)[..., :-1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, f64])
@pytest.mark.parametrize("Tk", [7, 97, 1025])
def test_sinks_match_reference(device, dtype, Tk):
    B, H, Tq = 3, 2, 4
    x = (torch.randn(B, H, Tq, Tk, device=device) * 4).to(dtype)
    L = torch.tensor([Tk, 2, 0], device=device)
    shapes = [(H, 1), (), (B, H, Tq), (Tq,)]
    cases = [dict(lengths=L, causal=True, scale=0.5),
             dict(mask=torch.rand(B, 1, Tq, Tk, device=device) > 0.3,
                  bias=torch.randn(Tq, Tk, device=device).to(dtype), window=(3, 2), softcap=5.0),
             dict(segment_ids=rand_segments(B, Tk, device), causal=True, prefix_lengths=1,
                  q_offset=torch.tensor([0, 3, Tk - 4], device=device))]
    for kw, shape in itertools.product(cases, shapes):
        for sinks_dtype in {dtype, torch.float32}:
            sinks = (torch.randn(shape, device=device) * 3).to(sinks_dtype)
            for fn in ("masked_softmax", "masked_log_softmax"):
                got = getattr(maskext, fn)(x, sinks=sinks, **kw)
                want = getattr(R, fn)(x, sinks=sinks, **kw)
                vis = R.masked_softmax(x.double(), sinks=sinks, **kw) > 0
                assert not got.isnan().any()
                _close(got[vis], want[vis], dtype)
                assert torch.equal(got[~vis], want[~vis])
            if dtype == f64:  # the sink keeps its share of every row
                assert (maskext.masked_softmax(x, sinks=sinks, **kw).sum(-1) < 1).all()
            if "lengths" in kw:  # lengths[2] == 0: fully masked rows stay 0
                assert (maskext.masked_softmax(x, sinks=sinks, **kw)[2] == 0).all()


def test_sinks_are_gpt_oss_eager(device):
    B, H, Tq, Tk = 2, 4, 5, 9
    x = torch.randn(B, H, Tq, Tk, device=device) * 3
    sinks = torch.randn(H, device=device)
    keep = R.visible(Tq, Tk, torch.tensor([9, 6], device=device), causal=True, device=device)
    bias = torch.zeros(keep.shape, device=device).masked_fill(~keep, torch.finfo(x.dtype).min)
    got = maskext.masked_softmax(x, scale=0.3, bias=bias, sinks=sinks.view(H, 1))
    torch.testing.assert_close(got, _gpt_oss_eager(x, bias, sinks, 0.3))
    spec = maskext.MaskSpec(lengths=torch.tensor([9, 6], device=device), causal=True)
    torch.testing.assert_close(maskext.masked_softmax(x, scale=0.3, spec=spec, sinks=sinks.view(H, 1)),
                               got)


def test_sinks_special_values(device):
    """-inf is no sink; NaN or +inf poisons the row's visible outputs (as the
    concatenated softmax does); masked and fully masked rows keep their value."""
    x = torch.randn(3, 1, 2, 6, device=device)
    L = torch.tensor([6, 3, 0], device=device)
    none = maskext.masked_softmax(x, lengths=L, sinks=torch.tensor(float("-inf"), device=device))
    assert torch.equal(none, maskext.masked_softmax(x, lengths=L))
    for bad in (float("nan"), float("inf")):
        for fn in (maskext.masked_softmax, maskext.masked_log_softmax):
            got = fn(x, lengths=L, sinks=torch.tensor([bad, 0.0], device=device))
            want = getattr(R, fn.__name__)(x, lengths=L, sinks=torch.tensor([bad, 0.0], device=device))
            torch.testing.assert_close(got, want, equal_nan=True)
            assert got[0, :, 0, :].isnan().all() and not got[0, :, 1, :].isnan().any()
            assert not got[1, :, 0, 3:].isnan().any() and not got[2].isnan().any()


@pytest.mark.parametrize("fn", [maskext.masked_softmax, maskext.masked_log_softmax],
                         ids=["softmax", "log_softmax"])
def test_sinks_gradchecks(device, fn):
    x = (torch.randn(3, 2, 4, 6, device=device, dtype=f64) * 3).requires_grad_()
    bias = torch.randn(1, 2, 4, 6, device=device, dtype=f64, requires_grad=True)
    sinks = torch.randn(2, 1, device=device, dtype=f64, requires_grad=True)
    kw = dict(mask=torch.rand(3, 1, 4, 6, device=device) > 0.2, scale=0.7,
              lengths=torch.tensor([6, 3, 0], device=device), causal=True)
    for extra in (dict(), dict(softcap=2.5)):
        f = lambda x, b, s: fn(x, bias=b, sinks=s, **kw, **extra)
        assert torch.autograd.gradcheck(f, (x, bias, sinks))
        assert torch.autograd.gradgradcheck(f, (x, bias, sinks))
        assert torch.autograd.gradcheck(lambda s: fn(x.detach(), sinks=s, **kw, **extra), (sinks,))
        dy = torch.randn_like(x)
        for leaves in ((x, sinks), (sinks,), (x, bias, sinks)):
            b = bias if len(leaves) == 3 else None
            xx = x if any(t is x for t in leaves) else x.detach()
            got = torch.autograd.grad(fn(xx, bias=b, sinks=sinks, **kw, **extra), leaves, dy)
            want = torch.autograd.grad(getattr(R, fn.__name__)(xx, bias=b, sinks=sinks, **kw, **extra),
                                       leaves, dy)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)


def test_sinks_errors_opcheck_compile(device):
    x = torch.randn(3, 2, 5, 7, device=device, requires_grad=True)
    with pytest.raises(TypeError, match=r"masked_softmax: sinks must be a torch.Tensor, got float"):
        maskext.masked_softmax(x, sinks=1.0)
    with pytest.raises(RuntimeError, match=r"masked_log_softmax: sinks of shape \[2, 7\] does not broadcast to x.shape\[:-1\] = \[3, 2, 5\]"):
        maskext.masked_log_softmax(x, sinks=torch.zeros(2, 7, device=device))
    with pytest.raises(RuntimeError, match=r"masked_softmax: sinks must be float16, bfloat16, float32 or float64, got Long"):
        maskext.masked_softmax(x, sinks=torch.zeros(2, 1, dtype=torch.int64, device=device))
    L = torch.tensor([7, 0, 3], device=device)
    sinks = torch.randn(2, 1, device=device, requires_grad=True)
    for op in (torch.ops.maskext.masked_softmax, torch.ops.maskext.masked_log_softmax):
        torch.library.opcheck(op, (x, None, None, L, None, True, -1, -1, 0.5, None, None, None, 0,
                                   None, 0, 0.0, sinks))

    def f(x, sinks):
        return maskext.masked_softmax(x, lengths=L, causal=True, sinks=sinks, softcap=3.0) * 2

    dy = torch.randn_like(x)
    y = torch.compile(f, fullgraph=True)(x, sinks)
    got = torch.autograd.grad(y, (x, sinks), dy)
    want = torch.autograd.grad(f(x, sinks), (x, sinks), dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_module_softcap_and_sinks(device):
    x = torch.randn(2, 3, 4, 5, device=device) * 10
    sinks = torch.randn(3, 1, device=device)
    sm = maskext.nn.MaskedSoftmax(causal=True, scale=0.5, softcap=4.0)
    assert "softcap=4.0" in repr(sm)
    torch.testing.assert_close(sm(x, sinks=sinks),
                               R.masked_softmax(x, causal=True, scale=0.5, softcap=4.0, sinks=sinks))
