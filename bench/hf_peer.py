#!/usr/bin/env python3
"""hf_peer.py - the Hugging Face transformers peer for bench_decode: Gemma with random bf16
weights at the real 2b/7b shapes on the same GPU, batch-1 greedy decode tokens/s.

Modes: eager (generate(), dynamic cache, sdpa attention); static-loop (a StaticCache and the
forward under torch.compile(mode="reduce-overhead"), i.e. CUDA graphs, driven one token per
call outside generate(): the fastest measured, 2026-11-24); compiled (generate() with
cache_implementation="static", which compiles the forward itself; if that fails, the forward is
compiled here without CUDA graphs). The best mode is reported as the peer. Decode rate = (gen - 1) tokens over
the time of generate(gen) minus generate(1), so the prompt's prefill is left out, as in
bench_decode. Prints one line per mode and, with --json, appends JSON lines.

--batch B (> 1): the serving peer instead: one generate() of B random prompts at once, eager
(dynamic cache) and/or static (cache_implementation="static": generate compiles the decode step),
output tokens/s = B * gen / the whole call's time (prefill included), as gemma-bench counts output
tokens over a run's duration; the faster mode is the peer."""
import argparse
import json
import sys
import time

SHAPES = {
    "2b": dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
               num_key_value_heads=1),
    "7b": dict(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
               num_key_value_heads=16),
}


def build(preset, torch, transformers):
    cfg = transformers.GemmaConfig(vocab_size=256000, head_dim=256, max_position_embeddings=8192,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
                                   bos_token_id=2, eos_token_id=1, pad_token_id=0, **SHAPES[preset])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.GemmaForCausalLM(cfg)
    torch.set_default_dtype(old)
    model.eval()
    with torch.no_grad():  # small random weights, like bench_decode's (never zeros)
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
    return model


def timed_generate(model, torch, ids, n, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n, out.shape
    return time.perf_counter() - t


def static_loop(model, torch, transformers, ids, gen):
    """Greedy decode with a StaticCache and the forward under torch.compile(mode="reduce-overhead"),
    one token per call, outside generate(); returns (decode tok/s, warm-up seconds)."""
    n0 = ids.shape[1]
    try:
        cache = transformers.StaticCache(config=model.config, max_cache_len=n0 + gen + 16)
    except TypeError:
        cache = transformers.StaticCache(config=model.config, max_batch_size=1, max_cache_len=n0 + gen + 16,
                                         device="cuda", dtype=torch.bfloat16)
    fwd = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        out = model(input_ids=ids, cache_position=torch.arange(n0, device="cuda"), past_key_values=cache,
                    use_cache=True)
        tok = out.logits[:, -1:].argmax(-1).clone()

        def step(i, tok):
            torch.compiler.cudagraph_mark_step_begin()
            o = fwd(input_ids=tok, cache_position=torch.tensor([n0 + i], device="cuda"), past_key_values=cache,
                    use_cache=True)
            return o.logits[:, -1:].argmax(-1).clone()

        t0 = time.perf_counter()
        for i in range(4):  # compilation and graph capture
            tok = step(i, tok)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(4, gen):
            tok = step(i, tok)
        torch.cuda.synchronize()
        return (gen - 4) / (time.perf_counter() - t0), warm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2b", choices=sorted(SHAPES))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--modes", default="eager,static-loop,compiled")
    ap.add_argument("--json", default=None, help="append results as JSON lines to this file")
    ap.add_argument("--batch", type=int, default=1, help="> 1: batched generate() throughput (serving peer)")
    ap.add_argument("--batch-modes", default="eager,static",
                    help="with --batch: eager (dynamic cache) and/or static (cache_implementation='static', "
                         "which compiles the decode step)")
    a = ap.parse_args()

    import torch
    import transformers
    dev = torch.cuda.get_device_name(0)
    print(f"hf peer: torch {torch.__version__}, transformers {transformers.__version__}, {dev}", flush=True)
    model = build(a.preset, torch, transformers)
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(3, 256000, (1, a.prompt), generator=g).cuda()
    ids[0, 0] = 2
    if a.batch > 1:
        ids = torch.randint(3, 256000, (a.batch, a.prompt), generator=g).cuda()
        ids[:, 0] = 2
        best = None
        for bmode in a.batch_modes.split(","):
            kw = dict(cache_implementation="static") if bmode == "static" else {}
            try:
                t0 = time.perf_counter()
                timed_generate(model, torch, ids, 4, **kw)  # warm-up (static: compiles the decode step)
                timed_generate(model, torch, ids, 4, **kw)
                warm = time.perf_counter() - t0
                t = timed_generate(model, torch, ids, a.gen, **kw)
                tps = a.batch * a.gen / t
                r = dict(peer="transformers", preset=a.preset, mode=f"{bmode}-batch", batch=a.batch, prompt=a.prompt,
                         gen=a.gen, out_tok_s=round(tps, 1), seconds=round(t, 2), warmup_s=round(warm, 1), device=dev)
                print(f"hf {a.preset} {bmode}-batch B={a.batch} prompt {a.prompt} gen {a.gen}: {tps:9.1f} output tok/s "
                      f"({t:.1f} s; warm-up {warm:.0f} s)", flush=True)
                if best is None or tps > best["out_tok_s"]:
                    best = r
            except Exception as e:
                r = dict(peer="transformers", preset=a.preset, mode=f"{bmode}-batch", batch=a.batch,
                         error=f"{type(e).__name__}: {e}"[:400])
                print(f"hf {a.preset} {bmode}-batch B={a.batch}: failed: {r['error']}", flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
        if best:
            print(f"hf {a.preset} best batch B={a.batch}: {best['mode']} {best['out_tok_s']} output tok/s", flush=True)
        return 0 if best else 1
    results = []
    for mode in a.modes.split(","):
        kw = {}
        if mode == "static-loop":
            try:
                tps, warm = static_loop(model, torch, transformers, ids, a.gen)
                r = dict(peer="transformers", preset=a.preset, mode=mode, prompt=a.prompt, gen=a.gen,
                         tok_s=round(tps, 2), ms_step=round(1e3 / tps, 3), warmup_s=round(warm, 1), device=dev)
                print(f"hf {a.preset} {mode:9s} B=1 prompt {a.prompt} gen {a.gen}: {tps:8.1f} tok/s "
                      f"({1e3 / tps:.3f} ms/step; warm-up {warm:.0f} s)", flush=True)
            except Exception as e:
                r = dict(peer="transformers", preset=a.preset, mode=mode, error=f"{type(e).__name__}: {e}"[:400])
                print(f"hf {a.preset} {mode}: failed: {r['error']}", flush=True)
            results.append(r)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
            continue
        try:
            if mode == "compiled":
                kw = dict(cache_implementation="static")
            t0 = time.perf_counter()
            try:
                timed_generate(model, torch, ids, 8, **kw)  # warm-up (and compilation)
            except Exception as e:
                if mode != "compiled":
                    raise
                print(f"hf {a.preset} compiled: generate's own compile failed ({type(e).__name__}: "
                      f"{str(e)[:160]}); compiling the forward without CUDA graphs", flush=True)
                mode = "compiled-nocg"
                model.forward = torch.compile(model.forward, mode="default", fullgraph=True)
                timed_generate(model, torch, ids, 8, **kw)
            timed_generate(model, torch, ids, 8, **kw)
            warm = time.perf_counter() - t0
            t1 = min(timed_generate(model, torch, ids, 1, **kw) for _ in range(2))
            tn = timed_generate(model, torch, ids, a.gen, **kw)
            tps = (a.gen - 1) / (tn - t1)
            r = dict(peer="transformers", preset=a.preset, mode=mode, prompt=a.prompt, gen=a.gen, tok_s=round(tps, 2),
                     ms_step=round(1e3 / tps, 3), warmup_s=round(warm, 1), device=dev)
            print(f"hf {a.preset} {mode:9s} B=1 prompt {a.prompt} gen {a.gen}: {tps:8.1f} tok/s "
                  f"({1e3 / tps:.3f} ms/step; warm-up {warm:.0f} s)", flush=True)
        except Exception as e:  # report, and go on to the next mode
            r = dict(peer="transformers", preset=a.preset, mode=mode, error=f"{type(e).__name__}: {e}"[:400])
            print(f"hf {a.preset} {mode}: failed: {r['error']}", flush=True)
        results.append(r)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    ok = [r for r in results if "tok_s" in r]
    if ok:
        best = max(ok, key=lambda r: r["tok_s"])
        print(f"hf {a.preset} best: {best['mode']} {best['tok_s']} tok/s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
