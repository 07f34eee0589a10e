"""maskext.hf: the Hugging Face transformers backend against HF's eager attention.

Tiny random models (2 layers, hidden 64, no download) whose weights are
initialised with std 0.2 instead of 0.02, so that attention scores are O(1-10):
at the default init softcapping and small mask errors would be invisible.
Every comparison is against attn_implementation="eager" on the same weights,
each model with its own config object (set_attn_implementation changes the
config it is given).

CI sets MASKEXT_REQUIRE_HF=1: there a missing transformers is an error, not a skip.
"""
import os
import subprocess
import sys

import pytest
import torch

import maskext

if os.environ.get("MASKEXT_REQUIRE_HF", "0") != "0":
    import transformers  # noqa: F401  (must be installed: fail, do not skip)
else:
    pytest.importorskip("transformers")

import transformers  # noqa: E402
from transformers import masking_utils as mu  # noqa: E402

import maskext.hf as mhf  # noqa: E402

NAME = mhf.register()
VOCAB = 97

# ---------------------------------------------------------------- tiny models

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               initializer_range=0.2, pad_token_id=0, eos_token_id=None, bos_token_id=1)


def _config(kind):
    if kind == "llama":
        return transformers.LlamaConfig(**_COMMON)
    if kind == "mistral":
        return transformers.MistralConfig(**_COMMON, sliding_window=5)
    if kind == "qwen2":
        return transformers.Qwen2Config(**_COMMON, use_sliding_window=True, sliding_window=5,
                                        layer_types=["sliding_attention", "full_attention"])
    if kind == "gemma2":
        return transformers.Gemma2Config(**_COMMON, head_dim=16, sliding_window=5,
                                         query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                                         final_logit_softcapping=30.0)
    if kind == "gpt_oss":
        c = dict(_COMMON, intermediate_size=32)
        return transformers.GptOssConfig(**c, head_dim=16, sliding_window=5, num_local_experts=4,
                                         num_experts_per_tok=2)
    if kind == "modernbert":
        return transformers.ModernBertConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, local_attention=6, global_attn_every_n_layers=2,
            initializer_range=0.2, pad_token_id=0, max_position_embeddings=128)
    if kind == "bert":
        return transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       initializer_range=0.2, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0)
    raise ValueError(kind)


DECODERS = ["llama", "mistral", "qwen2", "gemma2", "gpt_oss"]
ENCODERS = ["modernbert", "bert"]
_models = {}


def _auto(kind):
    return transformers.AutoModelForMaskedLM if kind in ENCODERS else \
        transformers.AutoModelForCausalLM


def models(kind, device="cpu"):
    """(eager, maskext) models with the same weights and separate configs."""
    key = (kind, device)
    if key not in _models:
        torch.manual_seed(0)
        eager = _auto(kind).from_config(_config(kind), attn_implementation="eager")
        ours = _auto(kind).from_config(_config(kind), attn_implementation=NAME)
        ours.load_state_dict(eager.state_dict())
        assert eager.config is not ours.config
        assert eager.config._attn_implementation == "eager"
        assert ours.config._attn_implementation == NAME
        _models[key] = (eager.to(device).eval(), ours.to(device).eval())
    return _models[key]


def batch(layout, device="cpu", T=12):
    """(input_ids, attention_mask or None, position_ids or None, real) where real
    (B, T) bool marks the tokens whose outputs must equal eager's."""
    g = torch.Generator().manual_seed(1)
    if layout == "packed":
        # two documents in row 0 (5 + 7 tokens), one in row 1: position_ids restart
        ids = torch.randint(2, VOCAB, (2, T), generator=g)
        pos = torch.tensor([list(range(5)) + list(range(T - 5)), list(range(T))])
        return ids.to(device), None, pos.to(device), torch.ones(2, T, dtype=torch.bool)
    lengths = torch.tensor([T, 9, 4])
    ids = torch.randint(2, VOCAB, (3, T), generator=g)
    ar = torch.arange(T)
    if layout == "right":
        real = ar < lengths[:, None]
    elif layout == "left":
        real = ar >= T - lengths[:, None]
    elif layout == "holes":
        real = torch.ones(3, T, dtype=torch.bool)
        real[1, 3:5] = False
        real[2, :2] = False
        real[2, 7] = False
    else:
        raise ValueError(layout)
    ids = ids.masked_fill(~real, 0)
    return ids.to(device), real.long().to(device), None, real


def _check_training_grads(eager, ours):
    """The gradients of one training step on a right-padded batch are eager's
    (with padding first, the last padding position predicts the first real
    token, and padding queries' rows differ from eager's, as documented)."""
    ids, mask, pos, real = batch("right")
    labels = ids.masked_fill(~real, -100)
    grads = []
    for m in (eager, ours):
        m.train()
        m.zero_grad()
        try:
            m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        finally:
            m.eval()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        m.zero_grad()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3, msg=n)


def logits_of(model, ids, mask, pos, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)


# ---------------------------------------------------------------- packaging

def test_import_maskext_does_not_import_transformers():
    code = "import sys, maskext; assert 'transformers' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_maskext_hf_without_transformers_says_what_to_install():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "try:\n    import maskext.hf\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "maskext.hf needs Hugging Face transformers >= 5: pip install 'maskext[hf]'" in out.stdout


def test_register_is_idempotent_and_checks_the_name():
    assert mhf.register() == "maskext"
    assert mhf.register("maskext") == "maskext"
    assert transformers.AttentionInterface._global_mapping["maskext"] is mhf.attention_forward
    assert mu.AttentionMaskInterface._global_mapping["maskext"] is mhf.mask_function
    with pytest.raises(ValueError, match=r"maskext.hf.register: name must not be one of .*'sdpa'"):
        mhf.register("sdpa")
    with pytest.raises(ValueError, match="maskext.hf.register: name must be a non-empty str"):
        mhf.register("")


def test_set_attn_implementation_switches_a_built_model():
    eager, _ = models("llama")
    model = _auto("llama").from_config(_config("llama"), attn_implementation="eager").eval()
    model.load_state_dict(eager.state_dict())
    model.set_attn_implementation(NAME)
    assert model.config._attn_implementation == NAME
    ids, mask, pos, real = batch("left")
    torch.testing.assert_close(logits_of(model, ids, mask, pos).logits[real],
                               logits_of(eager, ids, mask, pos).logits[real], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the mask function alone

def _materialise(m, B, Tq, Tk):
    """(B, 1, Tq, Tk) bool from what mask_function returned."""
    spec, keep = (m.spec, m.keep) if isinstance(m, mhf.MaskWithKeep) else (m, None)
    vis = maskext.attention_mask(spec=spec, q_len=Tq, k_len=Tk)  # B or 1 rows
    vis = vis.expand(B, 1, Tq, Tk)
    return vis if keep is None else vis & keep


PAD = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],    # left
                    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                    [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]],   # right
                   dtype=torch.bool)
HOLES = PAD.clone()
HOLES[1, 4] = False
POS = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1]]).expand(3, -1)


def _mask_cases():
    T = 12
    lp = (~PAD).cumsum(-1).eq(torch.arange(1, T + 1)).sum(-1)  # left padding, as HF counts it
    zero = torch.zeros(3, dtype=torch.long)
    packed = mu.find_packed_sequence_indices(POS)
    remap = getattr(mu, "remap_positions_for_packed_sequence", None)  # after transformers 5.17
    yield "causal", mu.causal_mask_function, None, 0, T, T, 0
    yield "causal-pad", mu.causal_mask_function, PAD, 0, T, T, 0
    yield "bidirectional-pad", mu.bidirectional_mask_function, PAD, 0, T, T, 0
    # cross attention: 5 decoder queries over 12 left-padded encoder keys
    yield "cross-pad", mu.bidirectional_mask_function, PAD, 0, 5, T, 0
    yield "cross-rightpad", mu.bidirectional_mask_function, PAD[1:], 0, 5, T, 0
    yield "sliding-pad", mu.sliding_window_causal_mask_function(4), PAD, 0, T, T, 0
    yield "sliding-bidir", mu.sliding_window_bidirectional_mask_function(3), PAD, 0, T, T, 0
    yield "chunked-leftpad", mu.chunked_causal_mask_function(5, lp), PAD, 0, T, T, 0
    yield "chunked", mu.chunked_causal_mask_function(5, zero), None, 0, T, T, 0
    yield "holes", mu.causal_mask_function, HOLES, 0, T, T, 0
    # packed documents as transformers <= 5.17 builds them (indices, not positions)
    yield "packed-indices", mu.and_masks(mu.causal_mask_function,
                                         mu.packed_sequence_mask_function(packed)), None, 0, T, T, 0
    if remap is not None:  # later versions count windows and chunks from the positions
        yield "packed", mu.and_masks(remap(mu.causal_mask_function, POS),
                                     mu.packed_sequence_mask_function(packed)), None, 0, T, T, 0
        yield "packed-sliding", mu.and_masks(remap(mu.sliding_window_causal_mask_function(3), POS),
                                             mu.packed_sequence_mask_function(packed)), None, 0, T, T, 0
        yield "packed-chunked", mu.and_masks(remap(mu.chunked_causal_mask_function(3, zero), POS),
                                             mu.packed_sequence_mask_function(packed)), None, 0, T, T, 0
        # remapped positions without HF's packed-document mask: not index-like, falls back
        yield "remap-alone", remap(mu.causal_mask_function, POS.flip(-1)), None, 0, T, T, 0
    # decoding with a dynamic cache: one query at position 11 of 12 keys
    yield "decode", mu.causal_mask_function, PAD, 11, 1, T, 0
    # a static cache of 16 slots, 3 queries at positions 9..11, the 2-D mask is 12 long
    yield "static", mu.causal_mask_function, PAD, torch.tensor(9), 3, 16, 0
    # a sliding-window cache: keys are absolute positions 8..11 (kv_offset 8), query at 11
    yield "sliding-cache", mu.sliding_window_causal_mask_function(4), PAD, 11, 1, 4, 8
    # not intervals: an or_mask (block-wise overlay) falls back to HF's own mask
    blocks = torch.tensor([[-1, -1, 0, 0, 0, -1, -1, 1, 1, -1, -1, -1]]).expand(3, -1)
    yield "blockwise", mu.or_masks(mu.causal_mask_function, mu.blockwise_overlay(blocks)), PAD, 0, \
        T, T, 0


@pytest.mark.parametrize("case", list(_mask_cases()), ids=lambda c: c[0])
def test_mask_function_equals_hf_sdpa_mask(case):
    name, fn, pad, q_offset, Tq, kv_length, kv_offset = case
    B = 3 if pad is None else pad.shape[0]
    ours = mhf.mask_function(batch_size=B, q_length=Tq, kv_length=kv_length, q_offset=q_offset,
                             kv_offset=kv_offset, mask_function=fn, attention_mask=pad)
    ref = mu.sdpa_mask(batch_size=B, q_length=Tq, kv_length=kv_length, q_offset=q_offset,
                       kv_offset=kv_offset, mask_function=fn, attention_mask=pad,
                       allow_is_causal_skip=False).expand(B, 1, Tq, kv_length)
    if name in ("blockwise", "remap-alone"):
        assert isinstance(ours, mhf.MaskWithKeep) and ours.keep.shape == (B, 1, Tq, kv_length)
    elif name in ("holes", "bidirectional-pad", "cross-pad"):
        # holes; left padding that every query sees alike: a (B, 1, 1, Tk) mask
        assert isinstance(ours, mhf.MaskWithKeep) and ours.keep.shape == (B, 1, 1, kv_length)
    else:
        assert isinstance(ours, maskext.MaskSpec), name
    got = _materialise(ours, B, Tq, kv_length)
    # Rows of padding queries may differ (documented: never read by a real token);
    # the rows of real queries must be identical.
    live = torch.ones(B, 1, Tq, 1, dtype=torch.bool)
    if pad is not None and not name.startswith("cross"):  # cross attention: no query padding
        qpos = int(q_offset) + torch.arange(Tq)
        live = torch.nn.functional.pad(pad, (0, 32))[:, qpos].view(B, 1, Tq, 1)
    assert live.any()
    torch.testing.assert_close(got & live, ref & live, msg=name)
    if pad is None or bool(pad[:, kv_offset:].all()) or name.startswith(("bidirectional", "cross")):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("case", list(_mask_cases()), ids=lambda c: c[0])
def test_mask_function_without_host_sync(case, monkeypatch):
    """host_sync=False: the 2-D mask is never read on the host (_padding, the
    one place that does, is not called) and goes with the spec as a (B, 1, 1,
    Tk) keep next to lengths = the end of the real keys; the real queries'
    rows equal HF's sdpa_mask."""
    name, fn, pad, q_offset, Tq, kv_length, kv_offset = case

    def no_sync(*args):
        raise AssertionError("host_sync=False read the padding mask on the host")
    monkeypatch.setattr(mhf, "_padding", no_sync)
    B = 3 if pad is None else pad.shape[0]
    ours = mhf.mask_function(batch_size=B, q_length=Tq, kv_length=kv_length, q_offset=q_offset,
                             kv_offset=kv_offset, mask_function=fn, attention_mask=pad,
                             host_sync=False)
    ref = mu.sdpa_mask(batch_size=B, q_length=Tq, kv_length=kv_length, q_offset=q_offset,
                       kv_offset=kv_offset, mask_function=fn, attention_mask=pad,
                       allow_is_causal_skip=False).expand(B, 1, Tq, kv_length)
    if name in ("blockwise", "remap-alone"):
        assert isinstance(ours, mhf.MaskWithKeep) and ours.keep.shape == (B, 1, Tq, kv_length)
    elif pad is not None:
        assert isinstance(ours, mhf.MaskWithKeep) and ours.keep.shape == (B, 1, 1, kv_length)
        assert ours.spec.lengths is not None
    else:
        assert isinstance(ours, maskext.MaskSpec), name
    got = _materialise(ours, B, Tq, kv_length)
    live = torch.ones(B, 1, Tq, 1, dtype=torch.bool)
    if pad is not None and not name.startswith("cross"):
        qpos = int(q_offset) + torch.arange(Tq)
        live = torch.nn.functional.pad(pad, (0, 32))[:, qpos].view(B, 1, Tq, 1)
    torch.testing.assert_close(got & live, ref & live, msg=name)


def test_register_host_sync():
    name = mhf.register("maskext-nosync", host_sync=False)
    fn = mu.AttentionMaskInterface._global_mapping[name]
    assert fn.func is mhf.mask_function and fn.keywords == {"host_sync": False}
    assert transformers.AttentionInterface._global_mapping[name] is mhf.attention_forward
    with pytest.raises(TypeError, match="maskext.hf.register: host_sync must be a bool"):
        mhf.register("maskext-nosync", host_sync=None)


# ---------------------------------------------------------------- whole models vs eager

# HF detects packed sequences (position_ids restarts) only for causal masks
@pytest.mark.parametrize("kind,layout", [(k, lay) for k in DECODERS + ENCODERS
                                         for lay in ("left", "right", "packed", "holes")
                                         if not (k in ENCODERS and lay == "packed")])
def test_logits_equal_eager(kind, layout):
    eager, ours = models(kind)
    ids, mask, pos, real = batch(layout)
    a = logits_of(eager, ids, mask, pos).logits
    b = logits_of(ours, ids, mask, pos).logits
    assert torch.isfinite(b).all()
    assert a.abs().max() > 1  # the comparison is not of near-zero numbers
    torch.testing.assert_close(b[real], a[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt_oss", "modernbert", "bert"])
def test_no_host_sync_logits_and_gradients_equal_eager(kind):
    """register(host_sync=False): the same logits at the real tokens for left
    and right padding and holes, and the same gradients of a training step."""
    eager, _ = models(kind)
    ours = _auto(kind).from_config(_config(kind),
                                   attn_implementation=mhf.register("maskext-nosync",
                                                                    host_sync=False))
    ours.load_state_dict(eager.state_dict())
    ours.eval()
    for layout in ("left", "right", "holes"):
        ids, mask, pos, real = batch(layout)
        a = logits_of(eager, ids, mask, pos).logits
        b = logits_of(ours, ids, mask, pos).logits
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b[real], a[real], atol=1e-4, rtol=1e-4, msg=layout)
    _check_training_grads(eager, ours)


@pytest.mark.parametrize("kind", DECODERS + ENCODERS)
def test_output_attentions_equal_eager(kind):
    eager, ours = models(kind)
    ids, mask, pos, real = batch("left")
    a = logits_of(eager, ids, mask, pos, output_attentions=True).attentions
    b = logits_of(ours, ids, mask, pos, output_attentions=True).attentions
    assert len(a) == len(b) == 2
    for wa, wb in zip(a, b):
        assert wb.dtype == wa.dtype and wb.shape == wa.shape
        rows = real[:, None, :, None].expand_as(wa)  # real queries (all keys)
        torch.testing.assert_close(wb[rows], wa[rows], atol=1e-5, rtol=1e-4)
        # weights are probabilities over the visible keys of real queries (with
        # sinks, gpt-oss, the sink takes its share: the rest sums to less than 1)
        sums = wb.sum(-1)[real[:, None].expand(wb.shape[:3])]
        if kind == "gpt_oss":
            assert (sums <= 1 + 1e-6).all() and (sums > 0).all() and sums.min() < 0.99
        else:
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_bf16_weights_dtype_and_accuracy(kind):
    """In bf16 the weights come back in bf16 (the query dtype) and maskext,
    which accumulates the softmax in fp32 from the bf16 scores as eager does,
    is as close to the fp32 result as eager in bf16 is."""
    eager, ours = models(kind)
    ids, mask, pos, real = batch("left")
    ref = logits_of(eager, ids, mask, pos).logits[real]
    errs = {}
    for name, m in (("eager", eager), ("maskext", ours)):
        m.to(torch.bfloat16)
        try:
            out = logits_of(m, ids, mask, pos, output_attentions=True)
        finally:
            m.to(torch.float32)
        assert all(w.dtype == torch.bfloat16 for w in out.attentions)
        errs[name] = (out.logits[real].float() - ref).abs().max().item()
    assert errs["maskext"] <= 1.5 * errs["eager"] + 1e-3, errs


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("kind", DECODERS)
def test_greedy_generate_identical(kind, cache):
    eager, ours = models(kind)
    ids, mask, _, _ = batch("left", T=8)
    kw = dict(max_new_tokens=7, do_sample=False, pad_token_id=0, cache_implementation=cache)
    a = eager.generate(ids, attention_mask=mask, **kw)
    b = ours.generate(ids, attention_mask=mask, **kw)
    assert a.shape[1] > ids.shape[1] + 5  # past the sliding windows (5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", DECODERS + ENCODERS)
def test_training_step_gradients_equal(kind):
    eager, ours = models(kind)
    _check_training_grads(eager, ours)


def test_dropout_in_training_matches_eager_with_the_same_seed():
    # the weights tensor is the same size and order as eager's, so the same
    # seed draws the same dropout mask
    eager, ours = models("llama")
    ids, mask, _, real = batch("right")
    outs = []
    for m in (eager, ours):
        for layer in m.model.layers:
            layer.self_attn.attention_dropout = 0.3
        m.train()
        try:
            torch.manual_seed(5)
            outs.append(m(input_ids=ids, attention_mask=mask).logits)
        finally:
            m.eval()
            for layer in m.model.layers:
                layer.self_attn.attention_dropout = 0.0
    torch.testing.assert_close(outs[1][real], outs[0][real], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(outs[0], eager(input_ids=ids, attention_mask=mask).logits)


# ---------------------------------------------------------------- no 4-D mask

@pytest.fixture
def probe():
    """Registers a backend whose attention function records what mask reached it."""
    seen = []

    def attention(module, query, key, value, attention_mask, **kw):
        seen.append(attention_mask)
        return mhf.attention_forward(module, query, key, value, attention_mask, **kw)

    transformers.AttentionInterface.register("maskext_probe", attention)
    mu.AttentionMaskInterface.register("maskext_probe", mhf.mask_function)
    return seen


@pytest.mark.parametrize("kind", ["llama", "gemma2", "qwen2", "modernbert"])
def test_no_4d_mask_reaches_the_attention_function(kind, probe):
    eager, _ = models(kind)
    model = _auto(kind).from_config(_config(kind), attn_implementation="maskext_probe").eval()
    model.load_state_dict(eager.state_dict())
    layouts = ["left", "right"] + ([] if kind in ENCODERS else ["packed"])
    for layout in layouts:
        ids, mask, pos, _ = batch(layout)
        logits_of(model, ids, mask, pos)
    if kind not in ENCODERS:
        ids, mask, _, _ = batch("left", T=8)
        for cache in ("dynamic", "static"):
            model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                           pad_token_id=0, cache_implementation=cache)
    assert len(seen := probe) > 0
    for m in seen:
        if isinstance(m, mhf.MaskWithKeep):
            # only an encoder's left padding, which every query sees alike: (B, 1, 1, Tk)
            assert kind in ENCODERS and m.keep.shape[-2] == 1, m.keep.shape
            m = m.spec
        assert isinstance(m, maskext.MaskSpec), type(m)
        for t in (m.lengths, m.q_lengths, m.q_offset, m.segment_ids, m.prefix_lengths):
            assert not isinstance(t, torch.Tensor) or t.dim() <= 2
    # a padding mask with holes arrives as a (B, 1, 1, Tk) broadcast mask
    probe.clear()
    ids, mask, pos, _ = batch("holes")
    logits_of(model, ids, mask, pos)
    assert probe and all(isinstance(m, mhf.MaskWithKeep) and m.keep.shape[-2] == 1
                         for m in probe)


def test_scores_are_order_one_to_ten():
    """The premise of every comparison above: the random weights give scores
    large enough for softcapping and mask errors to show."""
    eager, _ = models("gemma2")
    ids, mask, pos, _ = batch("right")
    layer = eager.model.layers[0].self_attn
    q, k = [], []
    hq = layer.q_proj.register_forward_hook(lambda m, i, o: q.append(o))
    hk = layer.k_proj.register_forward_hook(lambda m, i, o: k.append(o))
    try:
        logits_of(eager, ids, mask, pos)
    finally:
        hq.remove()
        hk.remove()
    qh = q[0].unflatten(-1, (4, 16)).transpose(1, 2)
    kh = k[0].unflatten(-1, (2, 16)).transpose(1, 2).repeat_interleave(2, 1)
    scores = (qh @ kh.transpose(-1, -2)) * 16 ** -0.5
    assert 1 < scores.abs().max() < 100 and scores.std() > 0.5


# ---------------------------------------------------------------- the attention function alone

def test_custom_4d_masks_pass_through():
    """A user's own 4-D mask (HF hands it over as is): bool keep or additive float."""
    eager, ours = models("llama")
    ids, _, _, real = batch("right")
    B, T = ids.shape
    keep = torch.ones(B, 1, T, T, dtype=torch.bool).tril()
    keep &= real[:, None, None, :]
    add = torch.zeros(B, 1, T, T).masked_fill(~keep, torch.finfo(torch.float32).min)
    a = logits_of(eager, ids, add, None).logits
    for m in (keep, add):
        b = logits_of(ours, ids, m, None).logits
        torch.testing.assert_close(b[real], a[real], atol=1e-4, rtol=1e-4)


def test_attention_forward_errors():
    mod = torch.nn.Module()
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of key/value "
                                         r"heads \(2\)"):
        mhf.attention_forward(mod, q, k, k, None)
    with pytest.raises(TypeError, match="attention_mask must be a maskext.MaskSpec"):
        mhf.attention_forward(mod, q, q, q, "causal")
    with pytest.raises(ValueError, match=r"attention_mask must be 4-D .* got shape \(1, 4\)"):
        mhf.attention_forward(mod, q, q, q, torch.ones(1, 4, dtype=torch.bool))


def test_no_mask_description_follows_is_causal_and_sliding_window():
    """attention_mask=None (no mask function ran): causal as sdpa does with
    is_causal, and sliding_window, against a plain reference."""
    torch.manual_seed(0)
    mod = torch.nn.Module()
    mod.is_causal = True
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    out, w = mhf.attention_forward(mod, q, k, v, None, scaling=0.5, sliding_window=3)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    i = torch.arange(6)
    keep = (i[None] <= i[:, None]) & (i[None] > i[:, None] - 3)
    ref = ((q @ kk.transpose(-1, -2)) * 0.5).masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(out, (ref @ vv).transpose(1, 2))


def test_sinks_against_gpt_oss_eager_formula():
    torch.manual_seed(0)
    mod = torch.nn.Module()
    q, k, v = torch.randn(2, 4, 5, 8) * 3, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    sinks = torch.randn(4, requires_grad=True)
    out, w = mhf.attention_forward(mod, q, k, v, maskext.MaskSpec(causal=True), scaling=0.3,
                                   s_aux=sinks)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * 0.3
    s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    full = torch.cat([s, sinks.view(1, 4, 1, 1).expand(2, 4, 5, 1)], -1).softmax(-1)[..., :-1]
    torch.testing.assert_close(w, full)
    g1, = torch.autograd.grad(w.sum() + out.square().sum(), sinks)
    g2, = torch.autograd.grad(full.sum() + (full @ vv).square().sum(), sinks)
    torch.testing.assert_close(g1, g2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_cuda_logits_and_generate_equal_eager(kind):
    eager, ours = models(kind, "cuda")
    ids, mask, pos, real = batch("left", "cuda")
    a = logits_of(eager, ids, mask, pos).logits
    b = logits_of(ours, ids, mask, pos).logits
    torch.testing.assert_close(b[real.cuda()], a[real.cuda()], atol=1e-4, rtol=1e-4)
    kw = dict(max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert torch.equal(eager.generate(ids, attention_mask=mask, **kw),
                       ours.generate(ids, attention_mask=mask, **kw))
