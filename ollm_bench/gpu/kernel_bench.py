"""Fused split-K decode kernels (optim/kernels) on the GPU, standalone (torch, transformers, triton;
no hydra):

    python -m ollm_bench.gpu.kernel_bench --out results/kv_gpu     # H100/H200
    python -m ollm_bench.gpu.kernel_bench --out /tmp/k --smoke     # CPU (Triton interpreter), tiny

1. correctness at real shapes (Llama-3.1-8B attention: 32 query / 8 KV heads, head_dim 128;
   Gemma-3: 4 / 1, head_dim 256; bf16; ragged batch): fused vs dequantize-then-attention, and
   quantize-on-write vs optim.kv_quant.encode bit for bit;
2. one layer's decode attention (fused kernel + split reduce) vs SDPA over bf16 K/V, contexts
   8k/32k/128k x batch 1/8: `triton.testing.do_bench` medians (it clears L2 before each call),
   bytes read (codes + scales + window, filled part) / time as a fraction of the measured
   device-to-device copy bandwidth (bytes read + written / time);
3. quantize-on-write: the decode write kernel per token, and the prefill append (torch encode)
   at 32k vs the prefill of one Llama-3.1-8B decoder layer;
4. a CUDA-graph decode (optim.graph_decode) of a 2-layer Llama-3.1-8B-shaped model per method,
   against the torch path's eager decode.
Storage contents are random for the timings (speed does not depend on values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

FORMATS = ("plain", "int8", "mixed", "kivi")


def timer(device):
    """Median milliseconds of fn(): do_bench on CUDA, perf_counter on CPU (smoke)."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, return_mode="median")

    def cpu(fn):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return cpu


def store_format(name: str):
    from optim.kv_static import INT8, PLAIN, kivi_format, mixed_format

    return {"plain": PLAIN, "int8": INT8, "mixed": mixed_format(), "kivi": kivi_format()}[name]


def new_layer(name, batch, heads, head_dim, capacity, device, dtype=torch.bfloat16):
    from optim.kv_static import StaticStoreLayer

    layer = StaticStoreLayer(store_format(name))
    layer.allocate(batch, heads, head_dim, dtype, device, capacity)
    return layer


def fill_random(layer, n: int) -> None:
    """Random codes/scales/window for a store holding n tokens per sequence (timing only)."""
    for t in layer.store_tensors().values():
        if t.dtype in (torch.uint8, torch.int8):
            t.copy_(torch.randint(-100 if t.dtype == torch.int8 else 0, 100, t.shape, dtype=t.dtype, device=t.device))
        elif t.dtype == torch.float8_e4m3fn:
            for i in range(t.shape[0]):  # one sequence at a time: a float32 temporary of the whole store is big
                t[i].copy_(torch.randn(t[i].shape, device=t.device).to(t.dtype))
        else:
            t.uniform_(0.01, 0.02)
    layer.lengths.fill_(n)
    layer.host_lengths = [n] * layer.batch


def correctness(device, smoke: bool) -> list[dict]:
    from optim.kv_static import reference_attention

    rows = []
    shapes = {"llama31_8b": (32, 8, 128), "gemma3": (4, 1, 256)}
    lengths = [1, 77, 300] if smoke else [1, 3000, 4101]
    for model, (hq, hkv, d) in shapes.items():
        for name in FORMATS:
            gen = torch.Generator(device).manual_seed(0)
            layer = new_layer(name, len(lengths), hkv, d, max(lengths) + 64, device)
            shape = (layer.batch, hkv, max(lengths), d)
            keys = torch.randn(shape, generator=gen, device=device) * 2 + torch.linspace(-3, 3, d, device=device)
            layer.append(keys.bfloat16(), torch.randn(shape, generator=gen, device=device).bfloat16(),
                         counts=[n - 5 if n > 5 else 0 for n in lengths])
            for _ in range(5 if lengths[0] > 5 else 1):
                step = torch.randn(layer.batch, hkv, 1, d, generator=gen, device=device).bfloat16()
                layer.update(step, -step)
            query = torch.randn(layer.batch, hq, 1, d, generator=gen, device=device).bfloat16()
            scale = d**-0.5
            got, ref = layer.attend(query, scale).double(), reference_attention(layer, query, scale)
            err = ((got - ref).norm() / ref.norm()).item()
            rows.append(dict(check="fused_vs_dequantized_sdpa", model=model, format=name, rel_err=err,
                             lengths=list(layer.host_lengths)))
            print(f"[kernel_bench] correctness {model:10s} {name:5s} rel err {err:.2e}", flush=True)
    for name in FORMATS:  # quantize-on-write vs encode, head_dim 128
        gen = torch.Generator(device).manual_seed(1)
        k = (torch.randn(2, 8, 200, 128, generator=gen, device=device) * 3).bfloat16()
        v = torch.randn(2, 8, 200, 128, generator=gen, device=device).bfloat16()
        at_once, stepped = (new_layer(name, 2, 8, 128, 256, device) for _ in range(2))
        at_once.append(k, v)
        stepped.append(k[:, :, :11], v[:, :, :11])
        for i in range(11, 200):
            stepped.update(k[:, :, i : i + 1], v[:, :, i : i + 1])
        same = {}  # field -> number of differing bytes (0: bit for bit)
        for field, a in at_once.store_tensors().items():
            if not field.startswith("win_"):
                b = getattr(stepped, field)
                a, b = (x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x for x in (a, b))
                same[field] = int((a != b).sum())
        rows.append(dict(check="write_kernel_equals_encode", format=name, equal=same))
        print(f"[kernel_bench] write==encode {name:5s} {same}", flush=True)
    return rows


def copy_bandwidth(device, bench, smoke: bool) -> float:
    n = (1 << 20) if smoke else (1 << 30)  # 2 GiB source, 2 GiB destination (bf16 elements)
    src = torch.randn(n, device=device).bfloat16()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    bw = 2 * src.numel() * src.element_size() / (ms * 1e-3)
    print(f"[kernel_bench] copy bandwidth {bw / 1e12:.3f} TB/s ({ms:.3f} ms, {4 * n / 2**30:.1f} GiB r+w)", flush=True)
    return bw


def sdpa_time(bench, batch, hq, hkv, d, ctx, device) -> tuple[float, str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(batch, hq, 1, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(batch, hkv, ctx, d, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for backend in ([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] if device.type == "cuda" else []):
        try:
            with sdpa_kernel([backend]):
                sdpa(q, k, v, enable_gqa=True)
                return bench(lambda: sdpa(q, k, v, enable_gqa=True)), backend.name
        except RuntimeError:
            continue
    return bench(lambda: sdpa(q, k, v, enable_gqa=True)), "default"


def timings(device, bench, copy_bw, smoke: bool) -> list[dict]:
    rows = []
    contexts, batches = ((256,), (1, 2)) if smoke else ((8192, 32768, 131072), (1, 8))
    grid = [("llama31_8b", 32, 8, 128, c, b) for c in contexts for b in batches]
    grid += [("gemma3", 4, 1, 256, contexts[0] if smoke else 32768, b) for b in batches]
    for model, hq, hkv, d, ctx, batch in grid:
        sdpa_ms, backend = sdpa_time(bench, batch, hq, hkv, d, ctx, device)
        sdpa_bytes = 2 * batch * hkv * ctx * d * 2
        rows.append(dict(model=model, context=ctx, batch=batch, kernel=f"sdpa_{backend.lower()}", ms=sdpa_ms,
                         kv_bytes=sdpa_bytes, bw_frac_of_copy=sdpa_bytes / (sdpa_ms * 1e-3) / copy_bw))
        print(f"[kernel_bench] {model} ctx={ctx} b={batch} sdpa({backend}) {sdpa_ms * 1e3:8.1f} us "
              f"{rows[-1]['bw_frac_of_copy']:.2f} of copy bw", flush=True)
        for name in FORMATS:
            try:
                rows.extend(fused_time(bench, name, model, hq, hkv, d, ctx, batch, device, copy_bw, sdpa_ms, smoke))
            except Exception as exc:  # e.g. out of memory at 128k x 8: record it, go on
                rows.append(dict(model=model, context=ctx, batch=batch, kernel=f"fused_{name}", error=repr(exc)[:300]))
                print(f"[kernel_bench] {model} ctx={ctx} b={batch} fused_{name} FAILED {exc!r}"[:300], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def fused_time(bench, name, model, hq, hkv, d, ctx, batch, device, copy_bw, sdpa_ms, smoke) -> list[dict]:
    layer = new_layer(name, batch, hkv, d, ctx, device)
    fill_random(layer, ctx)
    query = torch.randn(batch, hq, 1, d, device=device, dtype=torch.bfloat16)
    plan = layer.kernels.plan(layer, query)
    out = torch.empty(batch, 1, hq, d, device=device, dtype=torch.bfloat16)
    ms = bench(lambda: layer.kernels.attend(layer, query, d**-0.5, plan, out))  # the kernel and the split reduce
    nbytes = layer.filled_nbytes()
    frac = nbytes / (ms * 1e-3) / copy_bw
    print(f"[kernel_bench] {model} ctx={ctx} b={batch} fused_{name:5s} {ms * 1e3:8.1f} us "
          f"{nbytes / 2**20:8.1f} MiB {frac:.2f} of copy bw, {sdpa_ms / ms:.2f}x sdpa", flush=True)
    rows = [dict(model=model, context=ctx, batch=batch, kernel=f"fused_{name}", ms=ms, kv_bytes=nbytes,
                 bw_frac_of_copy=frac, splits=plan.nsplit, split_tokens=plan.split, vs_sdpa=sdpa_ms / ms)]
    if ctx == (256 if smoke else 32768) and model == "llama31_8b":
        rows.append(write_cost(layer, bench, model, ctx, batch))
    return rows


def write_cost(layer, bench, model, ctx, batch) -> dict:
    """One decode token's write, plain and completing a key block (the in-kernel quantization of
    G tokens); the lengths are reset before each call (`reset_ms` is that reset alone)."""
    k = torch.randn(layer.batch, layer.heads, 1, layer.head_dim, device=layer.device, dtype=torch.bfloat16)
    f, res = layer.fmt, {}
    flush = ctx - 4 * f.group
    flush -= (flush + 1 - f.residual) % f.group  # this length's write completes a block
    for case, n in (("step", flush - 1 if f.has_window else ctx - 2), ("flush", flush if f.has_window else None)):
        if n is None:
            continue
        start = torch.full_like(layer.lengths, n)

        def write(start=start):
            layer.lengths.copy_(start)
            layer.kernels.write(layer, k, k)
        res[case] = bench(write)
    reset = bench(lambda: layer.lengths.copy_(start))
    print(f"[kernel_bench] write_{f.name:5s} b={batch} {res['step'] * 1e3:.1f} us, completing a block "
          f"{res.get('flush', float('nan')) * 1e3:.1f} us (reset alone {reset * 1e3:.1f} us)", flush=True)
    return dict(model=model, context=ctx, batch=batch, kernel=f"write_{f.name}", ms=res["step"],
                flush_ms=res.get("flush"), reset_ms=reset)


def prefill_cost(device, bench, smoke: bool) -> list[dict]:
    """Prefill append (torch encode + the dequantized view for SDPA) of 32k tokens into one
    layer's store vs the prefill of one Llama-3.1-8B decoder layer (bf16, sdpa) over them."""
    from ollm_bench.gpu.decode_bench import build_model, llama31_8b_config

    ctx = 1024 if smoke else 32768
    config = llama31_8b_config(layers=1)
    if smoke:
        from transformers import LlamaConfig

        config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    layer_ms = prefill_ms(build_model(config, device, torch.bfloat16).model, bench, ctx, config.vocab_size, device)
    rows = [dict(check="prefill_one_llama_layer", context=ctx, ms=layer_ms)]
    k = torch.randn(1, 8, ctx, 128, device=device, dtype=torch.bfloat16)
    for name in FORMATS:
        layer = new_layer(name, 1, 8, 128, ctx, device)

        def append():
            layer.reset()
            layer.append(k, k)
        ms = bench(append)
        rows.append(dict(check="prefill_append", format=name, context=ctx, ms=ms, frac_of_layer_prefill=ms / layer_ms))
        print(f"[kernel_bench] prefill append {name:5s} {ms:.3f} ms = {ms / layer_ms:.3f} of a layer's prefill "
              f"({layer_ms:.2f} ms)", flush=True)
    return rows


def prefill_ms(model, bench, ctx, vocab, device) -> float:
    ids = torch.randint(0, vocab, (1, ctx), device=device)
    with torch.no_grad():
        return bench(lambda: model(input_ids=ids, use_cache=False))


def graph_decode(device, smoke: bool, steps: int = 20) -> list[dict]:
    from ollm_bench.gpu.decode_bench import _timed_steps, build_model, llama31_8b_config, tiny_configs
    from optim import FullPrecisionKV, Int8KV, KiviKV, MixedPrecisionKV
    from optim.graph_decode import GraphDecoder
    from optim.static_kv_arena import cache_kwarg

    config = tiny_configs()["llama_tiny"] if smoke else llama31_8b_config(layers=2)
    if smoke:
        config.head_dim = 64
    model = build_model(config, device, torch.bfloat16)
    kw, ctx, rows = cache_kwarg(model), (64 if smoke else 4096), []
    ids = torch.randint(3, config.vocab_size, (1, ctx), device=device)
    for cls in (FullPrecisionKV, Int8KV, MixedPrecisionKV, KiviKV):
        torch_method, method = cls(), cls(kernel="triton")
        ref_cache = torch_method.make_cache(config)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=True, **{kw: ref_cache}).logits[:, -1:]
            feed = [logits.argmax(-1)]
            ref = []
            for _ in range(steps):
                ref.append(model(input_ids=feed[-1], use_cache=True, **{kw: ref_cache}).logits)
                feed.append(ref[-1].argmax(-1))
        method.attach(model)
        try:
            cache = method.make_cache(config)
            driver = GraphDecoder(model, cache, check_sync=True)
            driver.reserve(ctx + 2 * steps + 8)
            driver.prefill(ids)
            got = [driver.step(feed[i]).clone() for i in range(steps)]  # teacher-forced by the torch path
            err = ((torch.cat(got) - torch.cat(ref)).float().norm() / torch.cat(ref).float().norm()).item()
            state = {"next": feed[-1]}

            def step():
                state["next"] = driver.step(state["next"]).argmax(-1)
            ms = statistics.median(_timed_steps(step, device, 3, steps - 4))
            rows.append(dict(check="graph_decode", method=cls.__name__, context=ctx, rel_err_vs_torch_path=err,
                             step_ms=ms, bytes_per_step=driver.bytes_per_step()))
            print(f"[kernel_bench] graph decode {cls.__name__:16s} rel err vs torch path {err:.2e}, "
                  f"{ms:.3f} ms/step (2 layers), {driver.bytes_per_step() / 2**20:.1f} MiB/step", flush=True)
        finally:
            method.detach(model)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--parts", default="correctness,timings,prefill,graph")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke and not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import transformers
    import triton

    torch.manual_seed(0)
    bench = timer(device)
    env = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               triton=triton.__version__, transformers=transformers.__version__)
    print(f"[kernel_bench] {env}", flush=True)
    result, parts = {"env": env}, args.parts.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [("correctness", lambda: correctness(device, args.smoke))]
    steps.append(("copy_bw", lambda: copy_bandwidth(device, bench, args.smoke)))
    steps.append(("timings", lambda: timings(device, bench, result["copy_bw"], args.smoke)))
    steps.append(("prefill", lambda: prefill_cost(device, bench, args.smoke)))
    steps.append(("graph", lambda: graph_decode(device, args.smoke)))
    for name, run in steps:
        if name in parts or name == "copy_bw":
            try:
                result[name] = run()
            except Exception:  # keep the other parts' numbers; the traceback goes into the log and the json
                import traceback

                traceback.print_exc()
                result[name] = {"error": traceback.format_exc()[-2000:]}
            (args.out / "kernels.json").write_text(json.dumps(result, indent=1))  # partial results survive a kill
    return result


if __name__ == "__main__":
    main()
