"""A small Llama-like Hugging Face model, forward and forward+backward with a
left-padded batch: attn_implementation "eager" vs "sdpa" vs "maskext"
(maskext.hf) vs "maskext-nosync" (maskext.hf.register(host_sync=False)), time
and memory.

    python benchmarks/bench_hf.py [--device cpu|cuda] [--threads N] [--batch B] [--seq T]
                                  [--layers L] [--hidden H] [--dtype fp32|bf16|fp16] [--out DIR]

Defaults: 4 layers, hidden 512, 8 query heads, 2 key/value heads (GQA), batch
8 x 1024 tokens on CUDA, 4 x 512 on the CPU (pass --batch/--seq for more).
Lengths uniform in [T/2, T], left padding (as generation pads).

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during one
call, above what was allocated before it. On the CPU there is no allocator
statistic, so the table gives the bytes of the attention-mask objects the
model's mask functions built in one forward (HF's (B, 1, T, T) masks for
eager / sdpa; the tensors inside maskext's MaskSpecs), which is the part of
memory this backend changes; the (B, H, T, T) scores that eager and maskext
both hold are not in it.

Before timing, maskext's logits are checked against eager's at the real tokens.
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

try:
    import transformers
    from transformers import masking_utils as mu
except ImportError:
    sys.exit("bench_hf.py needs transformers: pip install 'maskext[hf]'")

import maskext  # noqa: E402
import maskext.hf  # noqa: E402

# maskext-nosync: maskext.hf.register(host_sync=False), the padding mask never
# read on the host (a bool mask in the softmax instead of intervals).
PROVIDERS = ["eager", "sdpa", "maskext", "maskext-nosync"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, maskext.hf.MaskWithKeep):
        return _tensor_bytes(obj.spec) + _tensor_bytes(obj.keep)
    if isinstance(obj, maskext.MaskSpec):
        return sum(_tensor_bytes(t) for t in (obj.lengths, obj.q_lengths, obj.q_offset,
                                              obj.segment_ids, obj.prefix_lengths))
    return 0


class MaskBytes:
    """Wraps the mask functions of the providers to count the bytes of the
    masks they return (restored on exit)."""

    def __init__(self):
        self.bytes = 0
        self.saved = {}

    def __enter__(self):
        mapping = mu.AttentionMaskInterface._global_mapping
        for name in PROVIDERS:
            fn = self.saved[name] = mapping[name]

            def counted(*args, _fn=fn, **kwargs):
                out = _fn(*args, **kwargs)
                self.bytes += _tensor_bytes(out)
                return out
            mapping[name] = counted
        return self

    def __exit__(self, *exc):
        mu.AttentionMaskInterface._global_mapping.update(self.saved)


def build(args, impl, state=None):
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                   intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.kv_heads,
                                   max_position_embeddings=max(2048, args.seq), pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device=args.device, dtype=DTYPES[args.dtype])


def gpu_ms_and_syncs(fn, device):
    """One call of fn on CUDA: the summed time of the kernels it ran (ms), how
    many it launched, the host syncs it made (``torch.cuda.set_sync_debug_mode``'s
    warnings) and its host time (ms from the call to its return, the GPU idle
    at the start: with no sync inside, the time the host needs to queue the
    step). When the wall time is well above the kernel time the model is
    host-bound: then the host time and the launches say which provider's host
    work is the longer, and a sync, which waits for the previous step's
    kernels, costs the overlap of this step's host work with them. Nones on
    the CPU."""
    if device != "cuda":
        return None, None, None, None
    fn()  # warm: first-call costs are not the step's
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    host_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    us = sum(e.self_device_time_total for e in kernels)
    return us / 1000, sum(e.count for e in kernels), syncs, host_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="default: bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=2,
                    help="sweeps over the providers; each cell is the fastest sweep's median "
                         "(a shared machine's load then hits one provider less)")
    args = ap.parse_args()
    common.apply_common_args(args)
    cuda = args.device == "cuda"
    args.batch = args.batch or (8 if cuda else 4)
    args.seq = args.seq or (1024 if cuda else 512)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    maskext.hf.register()
    maskext.hf.register("maskext-nosync", host_sync=False)
    env = common.env_info(args.device)
    B, T = args.batch, args.seq
    print(f"model: Llama-like, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"{args.kv_heads} kv heads; batch {B} x {T} tokens, left padding, lengths uniform in "
          f"[{T // 2}, {T}]; {args.dtype}; {env['device']}", flush=True)

    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    real = torch.arange(T) >= T - lengths[:, None]
    ids = torch.randint(1, args.vocab, (B, T), generator=g).masked_fill(~real, 0)
    ids, mask, real = ids.to(args.device), real.long().to(args.device), real.to(args.device)
    labels = ids.masked_fill(~real, -100)

    state = build(args, "eager").state_dict()
    models = {p: build(args, p, state) for p in PROVIDERS}
    with torch.no_grad():
        ref = models["eager"](input_ids=ids, attention_mask=mask).logits
        got = models["maskext"](input_ids=ids, attention_mask=mask).logits
    err = (got[real].float() - ref[real].float()).abs().max().item()
    print(f"maskext vs eager logits at real tokens: max abs diff {err:.3g}", flush=True)
    del ref, got

    def call(mode, m):
        if mode == "forward":
            m.eval()

            def fn():
                with torch.no_grad():
                    return m(input_ids=ids, attention_mask=mask).logits
        else:
            m.train()  # dropout is 0 in this config: train() changes no numbers

            def fn():
                m.zero_grad(set_to_none=True)
                m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        return fn

    modes = ("forward", "forward+backward")
    times = {}
    bar = common.Progress(args.repeat * len(modes) * len(PROVIDERS), "hf")
    for _ in range(args.repeat):
        for mode in modes:
            for p in PROVIDERS:
                bar.step(f"{mode} {p}")
                ms = common.time_ms(call(mode, models[p]), args.device, args.min_run_time)
                times[mode, p] = min(ms, times.get((mode, p), float("inf")))
                models[p].zero_grad(set_to_none=True)
    rows = []
    for mode in modes:
        for p in PROVIDERS:
            fn = call(mode, models[p])
            with MaskBytes() as mb:  # CPU: the mask objects' bytes (no allocator statistic)
                peak = common.peak_bytes(fn, args.device) if args.device == "cuda" else None
                if peak is None:
                    fn()
            try:
                diag = gpu_ms_and_syncs(fn, args.device)
            except Exception as e:  # a diagnostic: never lose the table for it
                print(f"kernel time / syncs of {mode} {p} not measured: {e!r}", flush=True)
                diag = None, None, None, None
            rows.append((mode, p, times[mode, p], peak, mb.bytes if peak is None else None, *diag))
            models[p].zero_grad(set_to_none=True)

    mem_col = "peak CUDA memory (MiB)" if cuda else "attention-mask bytes per forward"
    lines = [f"Device: {env['device']}; torch {env['torch']}; transformers "
             f"{transformers.__version__}; commit {env['commit']}; {env['date']}.",
             f"Llama-like: {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} "
             f"heads; batch {B} x {T}, left padding; {args.dtype}. Median ms (the fastest of "
             f"{args.repeat} sweeps), and the multiple of eager's time in the same run.", "",
             f"| mode | attn_implementation | ms | vs eager | {mem_col} | kernel ms | kernels "
             "| host ms | host syncs |",
             "|---|---|---|---|---|---|---|---|---|"]
    if cuda:
        lines[1] += (" kernel ms: the summed time of one call's CUDA kernels (well under ms: "
                     "host-bound), kernels: how many it launched; host ms: one call's time on the "
                     "host, from an idle GPU; host syncs: per call "
                     "(`torch.cuda.set_sync_debug_mode`).")
    base = {mode: ms for mode, p, ms, *_ in rows if p == "eager"}
    for mode, p, ms, peak, per_call, kernel_ms, launches, syncs, host_ms in rows:
        mem = f"{peak / 2**20:.0f}" if peak is not None else f"{per_call:,}"
        kms = "n/a" if kernel_ms is None else f"{kernel_ms:.1f}"
        kn = "n/a" if launches is None else str(launches)
        hms = "n/a" if host_ms is None else f"{host_ms:.1f}"
        sy = "n/a" if syncs is None else str(syncs)
        lines.append(f"| {mode} | {p} | {ms:.1f} | {ms / base[mode]:.2f}x | {mem} | {kms} | {kn} "
                     f"| {hms} | {sy} |")
    md = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_hf.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
