#!/usr/bin/env python3
"""sdpa_peer.py - the peer of prefill_bench: torch.nn.functional.scaled_dot_product_attention,
causal, bf16, head_dim 256, on prefill_bench's shapes (2b: 8 query heads over 1 KV head; 7b: 16
over 16; T = 1k..8k; batch = max(1, tokens // T)), per backend: cuDNN, flash (FlashAttention-2 in
torch), memory-efficient. GQA through enable_gqa=True where the backend takes it, else through K/V
expanded to every query head before timing (the column `gqa` says which). TFLOP/s with
prefill_bench's count: batch * 4 * T^2 * head_dim * heads / 2. Timing: torch.cuda.Event around each
call after 3 warm-ups, median of --reps calls; random inputs.

Prints one CSV line per backend and shape, prefix "prefill," with prefill_bench's columns (kv is
always bf16: SDPA has no FP8 KV), so the two outputs join on model, T and batch:
  prefill,kernel,model,kv,T,batch,nh,nkv,hd,us,tflops,device,gqa
  python3 bench/sdpa_peer.py [--T 1024,2048,4096,8192] [--models 2b,7b] [--tokens 16384] [--reps 20]
"""
import argparse
import statistics
import sys

MODELS = {"2b": (8, 1), "7b": (16, 16)}
HD = 256


def time_call(torch, fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)  # us
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default="1024,2048,4096,8192")
    ap.add_argument("--models", default="2b,7b")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"sdpa_peer: torch not available ({e})", file=sys.stderr)
        return 77
    if not torch.cuda.is_available():
        print("sdpa_peer: no CUDA device", file=sys.stderr)
        return 77
    dev = torch.cuda.get_device_name().replace(",", " ")
    backends = [(name, getattr(SDPBackend, attr)) for name, attr in
                (("sdpa_cudnn", "CUDNN_ATTENTION"), ("sdpa_flash", "FLASH_ATTENTION"),
                 ("sdpa_efficient", "EFFICIENT_ATTENTION")) if hasattr(SDPBackend, attr)]
    print(f"# {dev}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"FLOPs = batch*4*T^2*hd*heads/2; median of {args.reps} calls")
    print("prefill,kernel,model,kv,T,batch,nh,nkv,hd,us,tflops,device,gqa")
    rows = []
    for model in args.models.split(","):
        nh, nkv = MODELS[model]
        for T in (int(t) for t in args.T.split(",")):
            batch = max(1, args.tokens // T)
            g = torch.Generator(device="cuda").manual_seed(T)
            q = torch.randn(batch, nh, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(batch, nkv, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(batch, nkv, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
            flops = batch * 4.0 * T * T * HD * nh / 2.0
            for name, be in backends:
                us, mode = None, ""
                for gqa in ([False] if nkv == nh else [True, False]):
                    kk, vv = k, v
                    if nkv != nh and not gqa:
                        kk = k.repeat_interleave(nh // nkv, dim=1)
                        vv = v.repeat_interleave(nh // nkv, dim=1)
                    try:
                        with sdpa_kernel(be):
                            if gqa:
                                fn = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True,
                                                                            scale=HD ** -0.5, enable_gqa=True)
                            else:
                                fn = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True,
                                                                            scale=HD ** -0.5)
                            us = time_call(torch, fn, args.reps)
                        mode = "enable_gqa" if gqa else ("expanded" if nkv != nh else "mha")
                        break
                    except (RuntimeError, TypeError) as e:
                        err = str(e).split("\n")[0][:120]
                        print(f"# {name} {model} T={T} gqa={gqa}: {err}", file=sys.stderr)
                    finally:
                        del kk, vv
                if us is None:
                    print(f"prefill,{name},{model},bf16,{T},{batch},{nh},{nkv},{HD},nan,nan,{dev},unsupported")
                    continue
                tf = flops / (us * 1e-6) / 1e12
                print(f"prefill,{name},{model},bf16,{T},{batch},{nh},{nkv},{HD},{us:.1f},{tf:.1f},{dev},{mode}")
                sys.stdout.flush()
                rows.append((name, model, T, batch, us, tf))
            del q, k, v
            torch.cuda.empty_cache()
    print("\n| kernel         | m  |     T | bat |    time us | TFLOP/s |\n|---|---|---|---|---|---|")
    for name, model, T, batch, us, tf in rows:
        print(f"| {name:<14} | {model:<2} | {T:5d} | {batch:3d} | {us:10.1f} | {tf:7.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
