#!/usr/bin/env python3
"""ref_gemma.py - an independent numpy float32 Gemma v1 forward pass, used to check the C engine.

Reads config.json and the safetensors file(s) of a checkpoint directly (header parsed
here with json + numpy; bf16 widened as uint16 << 16), runs the full prompt through
dense causal attention, and compares with a logits dump of gemma-generate:
relative Frobenius error <= 1e-4.

  ref_gemma.py --model DIR --tokens IDS.i32 --logits LOGITS.f32      compare one dump
  ref_gemma.py --model DIR --generate BIN --work DIR                  run BIN on built-in prompts
  ref_gemma.py --model DIR --golden BIN --work DIR                    end-to-end CLI checks (no numpy)
Exit 0 pass, 1 fail, 77 when numpy is missing (CTest skip).
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


def rope_tables(n, hd, theta):
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))))
    ang = np.arange(n, dtype=np.float32)[:, None] * inv[None, :].astype(np.float32)  # [n, hd/2] f32
    return np.cos(ang.astype(np.float64)).astype(np.float32), np.sin(ang.astype(np.float64)).astype(np.float32)


def rope(x, cos, sin):
    """x [n, heads, hd]; rotate-half layout."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def forward(cfg, W, ids):
    """Logits [n, vocab] float32 of a full teacher-forced pass over ids."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", H // nh)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    theta = float(cfg.get("rope_theta", 10000.0))
    n = len(ids)
    emb = W["model.embed_tokens.weight"]
    h = emb[np.asarray(ids)] * bf16_round(np.float32(np.sqrt(H)))
    cos, sin = rope_tables(n, hd, theta)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps)
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * np.float32(1.0 / np.sqrt(hd)) + mask[None]
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr = pr / pr.sum(axis=-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", pr, v).reshape(n, nh * hd)
        h = h + a @ W[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps)
        g = gelu_tanh(x @ W[p + "mlp.gate_proj.weight"].T) * (x @ W[p + "mlp.up_proj.weight"].T)
        h = h + g @ W[p + "mlp.down_proj.weight"].T
    h = rmsnorm(h, W["model.norm.weight"], eps)
    return (h @ emb.T).astype(np.float32)


def compare(cfg, W, ids, logits_path, label):
    got = np.fromfile(logits_path, dtype="<f4")
    V = cfg["vocab_size"]
    if got.size != len(ids) * V:
        print("%s: logits dump has %d floats, expected %d x %d" % (label, got.size, len(ids), V))
        return False
    got = got.reshape(len(ids), V)
    ref = forward(cfg, W, ids)
    err = float(np.linalg.norm((got - ref).astype(np.float64)) / np.linalg.norm(ref.astype(np.float64)))
    ok = err <= TOL and np.isfinite(got).all()
    print("%s: %d tokens, rel frobenius error %.3e %s" % (label, len(ids), err, "ok" if ok else "FAIL"))
    return ok


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
    a = ap.parse_args()
    if a.golden:
        return golden(a.golden, a.model, a.work)
    need_numpy()
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    W = load_tensors(a.model)
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
