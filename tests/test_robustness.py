"""No silent wrong answers: devices, NaN, overflow, 64-bit indexing, threads,
torch.compile(dynamic=True) and CUDA graphs."""
import sys
import threading

import pytest
import torch

import maskext
from maskext import reference as R

ops = torch.ops.maskext


# ---------------------------------------------------------------- devices

def _device_cases(a, b):
    """(op, argument, reference argument, args) for every tensor argument that
    can be on another device: `a` is the data's device, `b` the odd argument's."""
    x = lambda dev: torch.randn(3, 2, 4, 5, device=dev)
    L = lambda dev: torch.tensor([5, 2, 0], device=dev)
    m = lambda dev: torch.ones(5, dtype=torch.bool, device=dev)
    z = lambda dev: torch.randn(3, 5, 2, device=dev)
    cases = []
    for op in ("masked_softmax", "masked_log_softmax"):
        cases += [
            (op, "lengths", "x", (x(a), None, None, L(b), None, False, -1, -1, 1.0)),
            (op, "q_lengths", "x", (x(a), None, None, L(a), L(b), True, -1, -1, 1.0)),
            (op, "mask", "x", (x(a), m(b), None, None, None, False, -1, -1, 1.0)),
            (op, "bias", "x", (x(a), None, x(b), None, None, False, -1, -1, 1.0)),
            (f"{op}_backward", "grad_out", "out", (x(b), x(a), None, None, False, -1, -1, 1.0)),
            (f"{op}_backward", "lengths", "grad_out", (x(a), x(a), L(b), None, False, -1, -1, 1.0)),
        ]
    cases += [
        ("fill_padding", "lengths", "x", (z(a), L(b), 0.0, 1, False)),
        ("fill_padding_", "lengths", "x", (z(a), L(b), 0.0, 1, False)),
        ("masked_pool", "lengths", "x", (z(a), L(b), 1, 1)),
        ("gate", "lengths", "logits", (None, z(a), L(b), 1.0, False)),
        ("gate", "x", "logits", (z(b), z(a), L(a), 1.0, False)),
        ("gate_backward", "grad", "logits", (z(b), z(a), z(a), None, 1.0, False)),
        ("gate_backward", "x", "logits", (z(a), z(b), z(a), None, 1.0, False)),
        ("gate_backward", "lengths", "logits", (z(a), None, z(a), L(b), 1.0, False)),
        ("attention_mask", "q_lengths", "lengths", (L(a), L(b), 4, 5, False, -1, -1, torch.bool)),
    ]
    return cases


N_DEVICE_CASES = len(_device_cases("cpu", "cpu"))


def _message(call):
    with pytest.raises(RuntimeError) as e:
        call()
    return str(e.value).splitlines()[0]


@pytest.mark.parametrize("case", range(N_DEVICE_CASES))
def test_meta_tensor_with_cpu_data_is_an_error(case):
    """A meta tensor among CPU ones dispatches to the fake implementation, which
    used to return uninitialised memory. Both ways round, every argument."""
    for a, b in (("cpu", "meta"), ("meta", "cpu")):
        op, name, ref, args = _device_cases(a, b)[case]
        assert _message(lambda: getattr(ops, op)(*args)) == (
            f"maskext::{op}: {name} must be on the same device as {ref} ({a}), got {b}")


@pytest.mark.parametrize("case", range(N_DEVICE_CASES))
def test_device_check_in_the_kernels_says_the_same(case):
    """The C++ check (csrc/checks.cpp), reached by calling the CPU kernel
    directly with a meta argument: the same message as the fake's."""
    op, name, ref, args = _device_cases("cpu", "meta")[case]
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    assert _message(lambda: getattr(ops, op).default.redispatch(cpu, *args)) == (
        f"maskext::{op}: {name} must be on the same device as {ref} (cpu), got meta")


def test_public_functions_check_devices_too():
    x, L = torch.randn(2, 3), torch.tensor([1, 2], device="meta")
    for call in (lambda: maskext.masked_softmax(x, lengths=L), lambda: maskext.fill_padding(x, L),
                 lambda: maskext.masked_mean(x, L), lambda: maskext.soft_mask(x, L)):
        with pytest.raises(RuntimeError, match="must be on the same device as .* got meta"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", range(N_DEVICE_CASES))
def test_cpu_argument_with_cuda_data_is_an_error(case):
    op, name, ref, args = _device_cases("cuda", "cpu")[case]
    assert _message(lambda: getattr(ops, op)(*args)) == (
        f"maskext::{op}: {name} must be on the same device as {ref} (cuda:0), got cpu")


# ---------------------------------------------------------------- NaN

@pytest.mark.parametrize("fn", ["masked_softmax", "masked_log_softmax"])
# On CUDA, 6 and 1500 keys: the register tiers; 20000 fp32 keys: longer than
# the block tiers, tier D (sm_90) or the split rows without mask and bias, a
# block per row with them; 70000: the split rows without, longer than tier D.
@pytest.mark.parametrize("Tk", [6, 1500, 20000, 70000])
@pytest.mark.parametrize("general", [False, True])  # with mask and bias tensors
def test_nan_rule(device, fn, Tk, general):
    """A NaN (or +inf) visible score makes every visible output of its row NaN;
    masked positions keep their value (0, finfo.min); NaN where masked changes
    nothing. All-NaN rows are NaN, not taken for fully masked rows."""
    ours, ref = getattr(maskext, fn), getattr(R, fn)
    B, H, Tq = 5, 2, 3
    x = torch.randn(B, H, Tq, Tk, device=device)
    L = torch.tensor([Tk, Tk // 2, Tk, 4, 0], device=device)
    kw = dict(lengths=L)
    x[0, 0, 0, 1] = float("nan")               # visible: row (0, 0, 0) NaN
    x[1, :, :, Tk // 2 + 1] = float("nan")     # padding: nothing
    x[2, 1] = float("nan")                     # all-NaN rows
    x[2, 0, 1, 0] = float("inf")               # +inf: row NaN, as torch.softmax
    x[4] = float("nan")                        # fully masked (length 0): stays masked
    if general:
        mask = torch.ones(B, 1, 1, Tk, dtype=torch.bool, device=device)
        mask[:, :, :, 2] = False
        x[3, :, :, 2] = float("nan")           # masked by mask: nothing
        bias = torch.zeros(Tq, Tk, device=device)
        bias[:, 3] = float("-inf")
        x[3, :, :, 3] = float("nan")           # masked by bias: nothing
        kw.update(mask=mask, bias=bias)
    got, want = ours(x, **kw), ref(x, **kw)
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-5, rtol=1e-4)
    masked = 0.0 if fn == "masked_softmax" else torch.finfo(x.dtype).min
    visible = R.masked_softmax(torch.zeros_like(x), **kw) > 0
    nan_rows = torch.zeros(B, H, Tq, 1, dtype=torch.bool, device=device)
    nan_rows[0, 0, 0] = nan_rows[2, 1] = nan_rows[2, 0, 1] = True
    assert got[visible & nan_rows].isnan().all()
    assert not got[~nan_rows.expand_as(got)].isnan().any()
    assert (got[~visible] == masked).all()  # in NaN rows too


@pytest.mark.parametrize("fn", ["masked_softmax", "masked_log_softmax"])
# On CUDA (fp32), 6 keys: a register tier kernel (the poisoned row read again,
# store_poisoned_row); 8 and 1500: the streamed tiers (the row's slots); 20000:
# tier D (sm_90) or the split rows; general: the mask/bias tiers (the -inf bits),
# at 20000 keys the general kernel.
@pytest.mark.parametrize("Tk", [6, 8, 1500, 20000])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("general", [False, True])
def test_nan_rule_with_neg_inf_scores(device, fn, Tk, softcap, general):
    """In a NaN row, a visible score of -inf keeps the masked value (its exp is
    0) and every other visible output is NaN. softcap maps -inf and +inf to
    -softcap and +softcap, finite scores: with softcap a NaN row is NaN at
    every visible position, and +inf poisons nothing. The kernels answer such
    rows on a rare path of their own, tier by tier."""
    ours, ref = getattr(maskext, fn), getattr(R, fn)
    x = torch.randn(2, 2, 2, Tk, device=device)
    L = torch.tensor([Tk, Tk // 2 + 1], device=device)
    kw = dict(lengths=L, softcap=softcap)
    x[0, 0, 0, 1] = float("nan")
    x[0, 0, 0, 2] = float("-inf")
    x[1, 1, 1, 0] = float("-inf")
    x[1, 1, 1, Tk // 2] = float("inf")
    if general:
        kw.update(mask=torch.ones(2, 1, 1, Tk, dtype=torch.bool, device=device),
                  bias=torch.zeros(2, 1, Tk, device=device))
    got, want = ours(x, **kw), ref(x, **kw)
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-5, rtol=1e-4)
    masked = 0.0 if fn == "masked_softmax" else torch.finfo(x.dtype).min
    poisoned = [((0, 0, 0), 2)] + ([((1, 1, 1), 0)] if softcap is None else [])
    for row, neg_inf in poisoned:
        assert (got[row][neg_inf] == masked) == (softcap is None)
        others = [j for j in range(int(L[row[0]])) if j != neg_inf]
        assert got[row][others].isnan().all()
    nan_rows = got.isnan().any(-1)
    assert nan_rows.sum() == len(poisoned)


def test_masked_max_nan(device):
    x = torch.randn(3, 4, 2, device=device)
    x[0, 3, 0] = float("nan")  # padding (length 2): ignored
    x[1, 0, 1] = float("nan")  # real: propagates, as torch.amax
    L = torch.tensor([2, 4, 0], device=device)
    got = maskext.masked_max(x, L)
    torch.testing.assert_close(got, R.masked_max(x, L), equal_nan=True)
    assert got[1, 1].isnan() and not got[0].isnan().any() and (got[2] == 0).all()


# ---------------------------------------------------------------- overflow

@pytest.mark.parametrize("window", [(None, sys.maxsize), (sys.maxsize, None), (sys.maxsize, sys.maxsize),
                                    (sys.maxsize, 0), (0, sys.maxsize), (2**62, 2**62 + 1)])
def test_huge_window_sides_mean_unbounded(device, window):
    """p + right + 1 used to overflow int64 (every row empty)."""
    unbounded = tuple(None if w is not None and w > 2**40 else w for w in window)
    for Tq, Tk in ((4, 7), (7, 4), (5, 5)):
        x = torch.randn(2, 3, Tq, Tk, device=device)
        L = torch.tensor([Tk, Tk - 2], device=device)
        got = maskext.masked_softmax(x, lengths=L, causal=False, window=window)
        torch.testing.assert_close(got, maskext.masked_softmax(x, lengths=L, window=unbounded))
        torch.testing.assert_close(got, R.masked_softmax(x, lengths=L, window=window))
        if 0 not in window:
            assert (got.sum(-1) > 0.99).all()  # no empty rows
        am = maskext.attention_mask(L, q_len=Tq, k_len=Tk, window=window)
        assert torch.equal(am, maskext.attention_mask(L, q_len=Tq, k_len=Tk, window=unbounded))


# ---------------------------------------------------------------- 64-bit indexing

def _mem_available_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def test_more_than_2_pow_31_elements(device):
    """lengths_to_mask, mask_to_lengths, fill_padding and fill_padding_ over a
    2.15 GB tensor: the positions checked lie past element 2^31."""
    if device == "cpu" and _mem_available_gb() < 8:
        pytest.skip("needs 8 GB of free memory")
    if device == "cuda" and torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
        pytest.skip("needs 12 GB of GPU memory")
    T = 2**30 + 2**20  # 2 rows: 2^31 + 2^21 elements
    L = torch.tensor([3, T - 5], device=device)
    m = maskext.lengths_to_mask(L, T)
    assert m.numel() > 2**31
    tail = m[1, T - 7:]
    assert tail.tolist() == [True, True, False, False, False, False, False]
    assert m[0, :4].tolist() == [True, True, True, False]
    assert maskext.mask_to_lengths(m).tolist() == L.tolist()
    m = maskext.lengths_to_mask(L, T, left_pad=True, dtype=torch.uint8)
    assert m[1, :6].tolist() == [0, 0, 0, 0, 0, 1] and m[1, -1].item() == 1
    y = maskext.fill_padding(m, L, 7)  # uint8, right padding: real steps copied, padding 7
    assert y[1, :6].tolist() == [0, 0, 0, 0, 0, 1] and y[1, T - 6:].tolist() == [1, 7, 7, 7, 7, 7]
    assert y[0, -3:].tolist() == [7, 7, 7] and y[0, :4].tolist() == [0, 0, 0, 7]
    del y
    maskext.fill_padding_(m, L, 9, left_pad=True)
    assert m[1, :6].tolist() == [9, 9, 9, 9, 9, 1] and m[1, -1].item() == 1
    assert m[0, -4:].tolist() == [9, 1, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_more_than_2_pow_31_elements_cuda_softmax_and_gate():
    """The CUDA softmax forward/backward and gate kernels past element 2^31."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GB of GPU memory")
    Tq, Tk = 2**17 + 8, 2**14  # 2^31 + 2^17 elements, fp16
    x = torch.randn(1, 1, Tq, Tk, device="cuda", dtype=torch.float16)
    L = torch.tensor([Tk - 3], device="cuda")
    y = maskext.masked_softmax(x, lengths=L, causal=True)
    rows = slice(Tq - 5, Tq)  # the last rows lie past element 2^31
    # causal is aligned bottom-right: the last 5 rows of x are the 5 rows of the slice
    want = R.masked_softmax(x[:, :, rows].float(), lengths=L, causal=True).half()
    torch.testing.assert_close(y[:, :, rows], want, atol=2e-3, rtol=0)
    dx = ops.masked_softmax_backward(y, y, L, None, True, -1, -1, 1.0)
    assert torch.isfinite(dx[:, :, rows]).all() and dx[0, 0, -1, -3:].abs().sum() == 0
    del x, y, dx
    z = torch.randn(1, 2**31 + 64, 1, device="cuda", dtype=torch.float16)
    Lz = torch.tensor([2**31 + 60], device="cuda")
    m = maskext.soft_mask(z, Lz)
    torch.testing.assert_close(m[0, -70:-4], torch.sigmoid(z[0, -70:-4].float()).half())
    assert (m[0, -4:] == 0).all()


# ---------------------------------------------------------------- threads

def _all_ops(x, L, z, dy):
    """Every op family once, forward and backward: a tuple of results."""
    xr = x.detach().requires_grad_()
    y = maskext.masked_softmax(xr, lengths=L, causal=True, scale=0.5)
    (gx,) = torch.autograd.grad(y, xr, dy)
    lp = maskext.masked_log_softmax(x, lengths=L, window=(3, 1))
    zr = z.detach().requires_grad_()
    g = maskext.sigmoid_gate(zr, zr * 2, L, temperature=0.7)
    (gz,) = torch.autograd.grad(g.sum() + maskext.masked_mean(zr, L).sum(), zr)
    return (y, gx, lp, g, gz, maskext.fill_padding(z, L, -1.0), maskext.masked_max(z, L),
            maskext.lengths_to_mask(L, z.shape[1]),
            maskext.attention_mask(L, q_len=x.shape[2], k_len=x.shape[3], causal=True),
            maskext.lengths_from_padded(maskext.fill_padding(z, L), 0.0))


def test_eight_threads_give_the_serial_results(device):
    B, H, T = 6, 2, 200
    x = torch.randn(B, H, T, T, device=device)
    z = torch.randn(B, T, 16, device=device)
    dy = torch.randn(B, H, T, T, device=device)
    L = torch.randint(0, T + 1, (B,), device=device)
    serial = _all_ops(x, L, z, dy)
    results, errors = [None] * 8, []
    barrier = threading.Barrier(8)

    def work(k):
        try:
            barrier.wait()
            results[k] = [_all_ops(x, L, z, dy) for _ in range(3)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for per_thread in results:
        for run in per_thread:
            for got, want in zip(run, serial):
                assert torch.equal(got, want)


# ---------------------------------------------------------------- torch.compile

def test_compile_dynamic_no_recompile_per_shape(device):
    """One inductor compile serves every batch size and length, forward and
    backward (fake implementations with symbolic shapes; max_len, q_len and
    k_len taken from the shapes stay symbolic)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def f(x, L, z):
        p = maskext.masked_softmax(x, lengths=L, causal=True, scale=0.5)
        lp = maskext.masked_log_softmax(x, lengths=L)
        keep = maskext.lengths_to_mask(L, z.shape[1])
        am = maskext.attention_mask(L, q_len=x.shape[-2], k_len=x.shape[-1], causal=True)
        pooled = maskext.masked_mean(maskext.fill_padding(z, L), L)
        gated = maskext.sigmoid_gate(z, z * 0.5, L)
        return (p.sum() + (lp * p).sum() + pooled.sum() + gated.sum() + keep.sum()
                + am.float().sum())

    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("inductor")
    cf = torch.compile(f, backend=cnt, dynamic=True, fullgraph=True)
    compiles = None
    # sizes chosen so that no two dims coincide (duck sizing would add guards)
    for B, T in [(3, 7), (4, 9), (6, 13), (5, 11)]:
        x = torch.randn(B, 2, T, T, device=device, requires_grad=True)
        z = torch.randn(B, T, 8, device=device, requires_grad=True)
        L = torch.randint(0, T + 2, (B,), device=device)
        out = cf(x, L, z)
        gx, gz = torch.autograd.grad(out, (x, z))
        want = f(x, L, z)
        wx, wz = torch.autograd.grad(want, (x, z))
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(gx, wx)
        torch.testing.assert_close(gz, wz)
        if compiles is None:
            compiles = cnt.frame_count
    assert cnt.frame_count == compiles, "recompiled for a new shape"


# ---------------------------------------------------------------- CUDA graphs

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("T", [33, 32])  # 32: aligned rows, the streamed softmax tiers
def test_cuda_graph_capture_forward_backward(T):
    """Forward and backward captured once, replayed with new data and new
    lengths written into the captured tensors: no host sync, no captured values."""
    B, H, D = 4, 2, 8
    x = torch.randn(B, H, T, T, device="cuda", requires_grad=True)
    z = torch.randn(B, T, D, device="cuda", requires_grad=True)
    L = torch.tensor([T, 1, 0, 20], device="cuda")

    def step(x, z):
        p = maskext.masked_softmax(x, lengths=L, causal=True, scale=0.3)
        lp = maskext.masked_log_softmax(x, lengths=L)
        g = maskext.sigmoid_gate(z, z, L)
        return (p.square().sum() + (lp * p.detach()).sum() + maskext.masked_mean(g, L).sum()
                + maskext.fill_padding(g, L, 0.0).sum())

    def eager(x, z):
        x, z = x.detach().requires_grad_(), z.detach().requires_grad_()
        out = step(x, z)
        return (out, *torch.autograd.grad(out, (x, z)))

    graphed = torch.cuda.make_graphed_callables(step, (x, z))
    for lengths in ([T, 1, 0, 20], [5, T, 17, 0]):
        with torch.no_grad():
            L.copy_(torch.tensor(lengths))
            x.copy_(torch.randn_like(x))
            z.copy_(torch.randn_like(z))
        out = graphed(x, z)
        gx, gz = torch.autograd.grad(out, (x, z))
        want = eager(x, z)
        torch.testing.assert_close(out, want[0])
        torch.testing.assert_close(gx, want[1])
        torch.testing.assert_close(gz, want[2])
