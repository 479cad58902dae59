#!/usr/bin/env python3
"""ref_gemma.py - an independent numpy float32 Gemma 1/2/3 forward pass, used to check the C engine.

Reads config.json and the safetensors file(s) of a checkpoint directly (header parsed
here with json + numpy; bf16 widened as uint16 << 16), runs the full prompt through
dense causal attention, and compares with a logits dump of gemma-generate:
relative Frobenius error <= 1e-4.

  ref_gemma.py --model DIR --tokens IDS.i32 --logits LOGITS.f32      compare one dump
  ref_gemma.py --model DIR --generate BIN --work DIR                  run BIN on built-in prompts
  ref_gemma.py --model DIR --golden BIN --work DIR                    end-to-end CLI checks (no numpy)
  ref_gemma.py --model DIR --transformers                             this reference against transformers
  ref_gemma.py --model DIR --as-multimodal DST PREFIX                 Gemma 3 text -> ConditionalGeneration
Exit 0 pass, 1 fail, 77 when numpy (or, for --transformers, torch/transformers) is missing (CTest skip).
"""
import argparse
import json
import os
import struct
import subprocess
import sys

np = None


def need_numpy():
    global np
    try:
        import numpy
    except ImportError:
        print("ref_gemma.py: numpy is not installed; skipping", file=sys.stderr)
        sys.exit(77)
    np = numpy

TOL = 1e-4

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    # long enough for positions past 64 (and past one KV block many times over)
    " ".join(["The river ran past the mill and the old stone bridge, and the children counted boats."] * 6),
]


def load_tensors(model_dir):
    """name -> float32 numpy array, for every tensor in the checkpoint."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        with open(os.path.join(model_dir, fn), "rb") as f:
            raw = f.read()
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + hlen].decode("utf-8"))
        base = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            buf = raw[base + b:base + e]
            shape = info["shape"]
            dt = info["dtype"]
            if dt == "BF16":
                a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
            elif dt == "F32":
                a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
            else:
                raise ValueError("%s: tensor %s: dtype %s not handled" % (fn, name, dt))
            out[name] = a.reshape(shape)
    return out


def bf16_round(x):
    """Round float32 to the nearest bf16 value (ties to even), as float32."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def rmsnorm(x, w, eps):
    ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * (np.float32(1.0) + w)


def gelu_tanh(x):
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


def rope_tables(n, hd, theta, scale=1.0):
    """cos, sin [n, hd/2] float32; linear scaling divides the float32 inverse frequencies by `scale`."""
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))))
    inv = (inv / np.float32(scale)).astype(np.float32)
    ang = np.arange(n, dtype=np.float32)[:, None] * inv[None, :].astype(np.float32)  # [n, hd/2] f32
    return np.cos(ang.astype(np.float64)).astype(np.float32), np.sin(ang.astype(np.float64)).astype(np.float32)


def rope(x, cos, sin):
    """x [n, heads, hd]; rotate-half layout."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


# transformers' config-class defaults of the keys a saved Gemma 2/3 config may omit
DEFAULTS = {
    "gemma": {"rope_theta": 10000.0, "max_position_embeddings": 8192},
    "gemma2": {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rope_theta": 10000.0,
               "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "sliding_window": 4096},
    "gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rope_theta": 1000000.0,
                    "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256, "attn_logit_softcapping": None,
                    "final_logit_softcapping": None, "sliding_window": 4096, "sliding_window_pattern": 6},
}


def rope_of(obj, theta):
    """(theta, linear factor) of one RoPE parameter object."""
    if not obj:
        return theta, 1.0
    kind = obj.get("rope_type", obj.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ValueError("rope_type %s" % kind)
    return float(obj.get("rope_theta", theta)), float(obj["factor"]) if kind == "linear" else 1.0


def model_params(cfg):
    """Everything the forward pass needs, from a config.json dict (Gemma 1, 2, 3, or 3's text_config)."""
    mt = cfg.get("model_type", "gemma")
    tc = cfg
    if mt == "gemma3":
        tc, mt = cfg.get("text_config") or {}, "gemma3_text"
    d = dict(DEFAULTS[mt])
    d.update(tc)
    fam = {"gemma": 1, "gemma2": 2, "gemma3_text": 3}[mt]
    nh, H = d["num_attention_heads"], d["hidden_size"]
    p = {"family": fam, "H": H, "nh": nh, "nkv": d.get("num_key_value_heads") or nh,
         "hd": d.get("head_dim") or H // nh, "eps": float(d.get("rms_norm_eps") or 1e-6),
         "L": d["num_hidden_layers"], "V": d["vocab_size"]}
    p["prefix"] = "model." if tc is cfg else "language_model.model."  # as transformers saves it
    theta = float(d.get("rope_theta") or DEFAULTS[mt]["rope_theta"])
    local = float(d.get("rope_local_base_freq") or 10000.0) if fam == 3 else theta
    scale, lscale = rope_of(d.get("rope_scaling"), theta)[1], 1.0
    rp = d.get("rope_parameters")
    if rp and ("full_attention" in rp or "sliding_attention" in rp):
        theta, scale = rope_of(rp.get("full_attention"), theta) if rp.get("full_attention") else (theta, scale)
        local, lscale = rope_of(rp.get("sliding_attention"), local) if rp.get("sliding_attention") else (local, 1.0)
    elif rp:
        theta, scale = rope_of(rp, theta)
        local = theta
    assert lscale == 1.0
    p.update(theta=theta, theta_local=local, rope_scale=scale)
    if fam == 1:
        p.update(sliding=[False] * p["L"], window=0, qpas=p["hd"], attn_cap=None, final_cap=None)
        return p
    if d.get("layer_types"):
        sliding = [t == "sliding_attention" for t in d["layer_types"]]
    else:
        pat = 2 if fam == 2 else int(d.get("sliding_window_pattern") or 6)
        sliding = [(i + 1) % pat != 0 for i in range(p["L"])]
    p.update(sliding=sliding, window=d.get("sliding_window") or 0, qpas=float(d["query_pre_attn_scalar"]),
             attn_cap=d.get("attn_logit_softcapping") if fam == 2 else None,  # transformers' Gemma 3 ignores it
             final_cap=d.get("final_logit_softcapping"))
    return p


def softcap(x, cap):
    return (np.tanh((x / np.float32(cap)).astype(np.float64)).astype(np.float32) * np.float32(cap)) if cap else x


def forward(cfg, W, ids):
    """Logits [n, vocab] float32 of a full teacher-forced pass over ids (Gemma 1, 2 or 3)."""
    p = model_params(cfg)
    H, nh, nkv, hd, eps, fam = p["H"], p["nh"], p["nkv"], p["hd"], p["eps"], p["family"]
    n = len(ids)
    pre = next((x for x in (p["prefix"], "model.", "language_model.model.", "model.language_model.")
                if x + "embed_tokens.weight" in W), p["prefix"])
    emb = W[pre + "embed_tokens.weight"]
    h = emb[np.asarray(ids)] * bf16_round(np.float32(np.sqrt(H)))
    tables = {False: rope_tables(n, hd, p["theta"], p["rope_scale"]), True: rope_tables(n, hd, p["theta_local"])}
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    full_mask = np.where(j > i, -np.inf, 0.0).astype(np.float32)
    slide_mask = np.where((j > i) | (j <= i - p["window"]), -np.inf, 0.0).astype(np.float32) if p["window"] \
        else full_mask
    scale = np.float32(1.0 / np.sqrt(hd)) if fam == 1 else np.float32(p["qpas"] ** -0.5)
    for l in range(p["L"]):
        pl = pre + "layers.%d." % l
        x = rmsnorm(h, W[pl + "input_layernorm.weight"], eps)
        q = (x @ W[pl + "self_attn.q_proj.weight"].T).reshape(n, nh, hd)
        k = (x @ W[pl + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd)
        v = (x @ W[pl + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
        if fam == 3:  # QK-norm over head_dim, before RoPE
            q = rmsnorm(q, W[pl + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, W[pl + "self_attn.k_norm.weight"], eps)
        cos, sin = tables[p["sliding"][l]]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = softcap(np.einsum("qhd,khd->hqk", q, k) * scale, p["attn_cap"])
        s = s + (slide_mask if p["sliding"][l] else full_mask)[None]
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr = pr / pr.sum(axis=-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", pr, v).reshape(n, nh * hd) @ W[pl + "self_attn.o_proj.weight"].T
        if fam == 1:
            h = h + a
            x = rmsnorm(h, W[pl + "post_attention_layernorm.weight"], eps)
        else:
            h = h + rmsnorm(a, W[pl + "post_attention_layernorm.weight"], eps)
            x = rmsnorm(h, W[pl + "pre_feedforward_layernorm.weight"], eps)
        g = gelu_tanh(x @ W[pl + "mlp.gate_proj.weight"].T) * (x @ W[pl + "mlp.up_proj.weight"].T)
        m = g @ W[pl + "mlp.down_proj.weight"].T
        h = h + (m if fam == 1 else rmsnorm(m, W[pl + "post_feedforward_layernorm.weight"], eps))
    h = rmsnorm(h, W[pre + "norm.weight"], eps)
    return softcap((h @ emb.T).astype(np.float32), p["final_cap"])


def compare(cfg, W, ids, logits_path, label):
    got = np.fromfile(logits_path, dtype="<f4")
    V = model_params(cfg)["V"]
    if got.size != len(ids) * V:
        print("%s: logits dump has %d floats, expected %d x %d" % (label, got.size, len(ids), V))
        return False
    got = got.reshape(len(ids), V)
    ref = forward(cfg, W, ids)
    err = float(np.linalg.norm((got - ref).astype(np.float64)) / np.linalg.norm(ref.astype(np.float64)))
    ok = err <= TOL and np.isfinite(got).all()
    print("%s: %d tokens, rel frobenius error %.3e %s" % (label, len(ids), err, "ok" if ok else "FAIL"))
    return ok


def vs_transformers(model_dir, cfg, W):
    """Check this numpy reference against transformers (float32, eager attention) on the same checkpoint.

    Measured once (transformers 5.25, torch 2.15, CPU) on the CTest models tiny_gemma2 / tiny_gemma3
    (gemma-mkmodel --seed 5, bf16 weights, 16-token window), random ids of 10, 37 and 120 tokens:
      Gemma 2: max |logit error| 8.2e-07 (logits up to 0.30, soft-capped), relative Frobenius error <= 8.1e-07;
      Gemma 3: max |logit error| 2.0e-06 (logits up to 1.05), relative Frobenius error <= 1.2e-06.
    Leaving out any one feature (window, either soft-cap, query_pre_attn_scalar, QK-norm, the local RoPE
    base, linear RoPE scaling) moves the error to 7e-3 .. 1.1, so each is exercised. The tolerance used
    here and against the C engine (TOL) is 1e-4.
    Returns 0 ok, 1 error above TOL, 77 when torch or transformers is missing."""
    try:
        import torch
        import transformers
    except ImportError:
        print("ref_gemma.py: torch/transformers are not installed; skipping", file=sys.stderr)
        return 77
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        print("transformers loaded %s with %s" % (model_dir, bad))
        return 1
    p = model_params(cfg)
    # transformers rounds sqrt(hidden) to the dtype it runs in (float32 here); this reference and the engines
    # round it to bf16, as the bf16 checkpoint's own dtype would: give transformers the same multiplier
    model.model.embed_tokens.embed_scale.fill_(float(bf16_round(np.float32(np.sqrt(p["H"])))))
    rng = np.random.default_rng(1)
    worst_abs, worst_rel = 0.0, 0.0
    for n in (10, 37, 120):
        ids = [2] + rng.integers(4, p["V"], n - 1).tolist()
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0].float().numpy()
        ref = forward(cfg, W, ids)
        err = float(np.abs(got - ref).max())
        rel = float(np.linalg.norm((got - ref).astype(np.float64)) / np.linalg.norm(ref.astype(np.float64)))
        print("transformers vs numpy, %d tokens: max abs error %.3e (max |logit| %.3f), rel frobenius %.3e" %
              (n, err, float(np.abs(ref).max()), rel))
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
    return 0 if worst_rel <= TOL else 1


def as_multimodal(src, dst, prefix):
    """Rewrite the Gemma 3 text checkpoint src as the text part of a Gemma3ForConditionalGeneration in dst:
    config.json with the text keys under text_config (eos and dtype at the top, as published), every tensor
    renamed model.X -> PREFIX + X. Pure Python (no numpy): a fixture for the loaders' prefix handling."""
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    top = {k: cfg.pop(k) for k in ("eos_token_id", "torch_dtype") if k in cfg}
    cfg.pop("architectures", None)
    out = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": cfg,
           "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
           "mm_tokens_per_image": 256, "vision_config": {"model_type": "siglip_vision_model"}}
    out.update(top)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(out, f, indent=2)
    with open(os.path.join(src, "tokenizer.model"), "rb") as f, open(os.path.join(dst, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    renamed = {(prefix + k[len("model."):] if k.startswith("model.") else k): v for k, v in header.items()}
    hb = json.dumps(renamed).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + raw[8 + hlen:])
    return 0


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def golden(binary, model, work):
    """Greedy output is reproducible, --prefill-only prints one newline, errors exit 1/2."""
    os.makedirs(work, exist_ok=True)
    fails = []

    def check(cond, what):
        print("%s: %s" % ("ok" if cond else "FAIL", what))
        if not cond:
            fails.append(what)

    base = [binary, "--model", model, "--prompt", "Once upon a time"]
    rc1, out1, err1 = run(base + ["--max-tokens", "24"])
    rc2, out2, _ = run(base + ["--max-tokens", "24"])
    check(rc1 == 0 and rc2 == 0, "greedy runs succeed (%d, %d) %s" % (rc1, rc2, err1.strip()[-200:]))
    check(out1 == out2, "greedy output is identical across runs")
    check(out1.endswith(b"\n") and not out1.endswith(b"\n\n") or out1 == b"\n", "output ends with one newline")
    check(len(out1) > 1, "greedy output is not empty (%r)" % out1[:60])
    rc, out, _ = run(base + ["--prefill-only"])
    check(rc == 0 and out == b"\n", "--prefill-only prints just a newline (%r)" % out[:40])
    rc, out, _ = run(base + ["--max-tokens=0", "--kv-block-size=4"])
    check(rc == 0 and len(out) > len(out1) - 1, "--max-tokens 0 runs until EOS or the context (%d bytes)" % len(out))
    rc, outc, _ = run(base + ["--max-tokens", "5"])
    check(rc == 0 and out1.startswith(outc[:-1]), "5 greedy tokens are a prefix of 24 (%r)" % outc[:60])
    samp = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--seed", "7", "--max-tokens", "16"]
    rc1, s1, _ = run(base + samp)
    rc2, s2, _ = run(base + samp)
    check(rc1 == 0 and s1 == s2, "sampling with one seed is reproducible")
    rc, out, _ = run(base + ["--chat", "--max-tokens", "8"])
    check(rc == 0 and out.endswith(b"\n"), "chat mode runs")
    rc, out, err = run(base + ["--prefill-only", "--kv-block-size", "3", "--dump-logits",
                               os.path.join(work, "g.logits")])
    check(rc == 0 and os.path.getsize(os.path.join(work, "g.logits")) % 4 == 0, "--dump-logits writes floats")
    txt = os.path.join(work, "ppl.txt")
    with open(txt, "w") as f:
        f.write("The quick brown fox jumps over the lazy dog. " * 130)
    rc, out, err = run([binary, "--model", model, "--perplexity", txt])
    lines = out.decode(errors="replace").splitlines()
    ok = rc == 0 and len(lines) == 2 and lines[1].startswith("perplexity: ")
    if ok:
        ppl = float(lines[1].split()[1])
        ok = 1.0 < ppl < 1e6
    check(ok, "--perplexity prints a finite value (%r %s)" % (out[:80], err.strip()[-200:]))
    rc, out, err = run([binary, "--model", model, "--perplexity", txt, "--ctx=128"])
    words = out.decode(errors="replace").split()
    ok = rc == 0 and words[:1] == ["tokens:"] and words[4:6] == ["ctx:", "128"]
    if ok:  # windows of 128 tokens (BOS + 127 scored) cover every token once
        ntok, nwin = int(words[1]), int(words[3])
        ok = nwin == -(-ntok // 127) and nwin > 1
    check(ok, "--ctx 128 scores the text in ceil(tokens / 127) windows (%r)" % out[:80])
    rc, out, _ = run([binary, "--model", model, "--perplexity", txt, "--ctx", "1000000"])
    check(rc == 2, "--ctx beyond the model's context exits 2")
    rc, out, _ = run(base + ["--top-p", "1.5"])
    check(rc == 2 and out == b"", "a bad value exits 2")
    rc, out, _ = run(base + ["--no-such-flag"])
    check(rc == 2, "an unknown flag exits 2")
    rc, out, err = run([binary, "--model", os.path.join(work, "missing"), "--prompt", "x"])
    check(rc == 1 and "missing" in err, "a missing model exits 1 naming it")
    rc, out, _ = run([binary, "--help"])
    check(rc == 0 and b"--dump-logits" in out, "--help")
    return 1 if fails else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens")
    ap.add_argument("--logits")
    ap.add_argument("--generate", help="gemma-generate binary: run the built-in prompts")
    ap.add_argument("--work", default=".", help="directory for dumps (with --generate)")
    ap.add_argument("--golden", help="gemma-generate binary: end-to-end output checks")
    ap.add_argument("--extra", action="append", default=[], help="extra gemma-generate flag (--extra=--x=1)")
    ap.add_argument("--transformers", action="store_true", help="check this reference against transformers")
    ap.add_argument("--as-multimodal", nargs=2, metavar=("DST", "PREFIX"),
                    help="write --model (Gemma 3 text) to DST as a Gemma3ForConditionalGeneration, names PREFIX*")
    a = ap.parse_args()
    if a.as_multimodal:
        return as_multimodal(a.model, a.as_multimodal[0], a.as_multimodal[1])
    if a.golden:
        return golden(a.golden, a.model, a.work)
    need_numpy()
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    W = load_tensors(a.model)
    if a.transformers:
        return vs_transformers(a.model, cfg, W)
    if a.generate:
        os.makedirs(a.work, exist_ok=True)
        ok = True
        for i, prompt in enumerate(PROMPTS):
            tp = os.path.join(a.work, "p%d.ids" % i)
            lp = os.path.join(a.work, "p%d.logits" % i)
            cmd = [a.generate, "--model", a.model, "--prompt", prompt, "--prefill-only",
                   "--dump-logits", lp, "--dump-tokens", tp] + a.extra
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                print("prompt %d: gemma-generate failed (%d): %s" % (i, r.returncode, r.stderr.decode()))
                ok = False
                continue
            ids = np.fromfile(tp, dtype="<i4").tolist()
            ok = compare(cfg, W, ids, lp, "prompt %d" % i) and ok
        if len(np.fromfile(os.path.join(a.work, "p%d.ids" % (len(PROMPTS) - 1)), dtype="<i4")) <= 80:
            print("the long prompt has too few tokens to reach position 80")
            ok = False
        return 0 if ok else 1
    if not (a.tokens and a.logits):
        ap.error("--tokens and --logits (or --generate) are required")
    ids = np.fromfile(a.tokens, dtype="<i4").tolist()
    return 0 if compare(cfg, W, ids, a.logits, a.logits) else 1


if __name__ == "__main__":
    sys.exit(main())
