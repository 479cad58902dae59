#!/usr/bin/env python3
"""gemma3_270m_reference.py - derive tests/data/gemma3_270m_expected.txt from Hugging Face
transformers loading the same GGUF file gemmad loads (scripts/fetch_gemma3_270m.sh).

Run once by hand (CPU, about a minute); the output is committed and the tests only read it:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers gguf accelerate sentencepiece
    /tmp/ref/bin/python scripts/gemma3_270m_reference.py "$(scripts/fetch_gemma3_270m.sh)" \
        > tests/data/gemma3_270m_expected.txt

With --conventions it instead prints the GGUF-convention checks docs/GGUF.md reports (norm +1,
no Q/K permutation, defaults, vocabulary, tied embedding).
"""
import os
import sys

import numpy as np
import torch

PROMPTS = [
    ("capital", "The capital of France is"),
    ("water", "Water boils at a temperature of"),
    ("colors", "The three primary colors are"),
    ("qa", "Question: What is the capital of Japan?\nAnswer:"),
]
CHAT = ("chat", "What is the capital of Japan? Answer in one word.")
TOKENIZE = ["The capital of France is", "Hello  world,\n  na\u00efve caf\u00e9 123456 \u6771\u4eac \U0001F600",
            "def f(x):\n\treturn x ** 2  # square", "<start_of_turn>user"]
NEW_TOKENS = 16


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return tok, model


def greedy(model, ids):
    """Greedy continuation of ids: (new ids, top-5 ids and logits of the first position)."""
    x = torch.tensor([ids])
    out, top = [], None
    with torch.no_grad():
        for step in range(NEW_TOKENS):
            logits = model(x).logits[0, -1].float()
            if step == 0:
                v, i = torch.topk(logits, 5)
                top = (i.tolist(), v.tolist())
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            if nxt in (1, 106):  # <eos>, <end_of_turn>
                break
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out, top


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def reference(path):
    import transformers
    tok, model = load(path)
    print("# Gemma 3 270M (Q4_K_M GGUF, sha256 a5fd3b62...6818, scripts/fetch_gemma3_270m.sh): reference")
    print("# outputs of Hugging Face transformers %s (torch %s, CPU, float32) loading the same GGUF file" %
          (transformers.__version__, torch.__version__))
    print("# (AutoModelForCausalLM/AutoTokenizer.from_pretrained(dir, gguf_file=...), dtype=torch.float32),")
    print("# produced by scripts/gemma3_270m_reference.py. Greedy decoding (argmax), at most %d new tokens," % NEW_TOKENS)
    print("# stopping after <eos> (1) or <end_of_turn> (106). 'top5' are the ids and logits of the five")
    print("# largest logits at the last prompt position (the first generated token). The chat prompt is")
    print("# <bos><start_of_turn>user\\nQUESTION<end_of_turn>\\n<start_of_turn>model\\n with Gemma 3's ids 105/106.")
    print("# 'tokenize' lines: the transformers tokenizer's ids (no BOS) for a text given as a JSON string.")
    print("# Format: one 'key: values' per line; a 'prompt NAME' line starts each prompt's block.")
    import json
    for text in TOKENIZE:
        print("tokenize: %s -> %s" % (json.dumps(text), " ".join(map(str, encode(tok, text)))))
    cases = [(n, [2] + encode(tok, t), t) for n, t in PROMPTS]
    q = CHAT[1]
    chat_ids = [2, 105] + encode(tok, "user\n" + q) + [106] + encode(tok, "\n") + [105] + encode(tok, "model\n")
    cases.append((CHAT[0], chat_ids, q))
    for name, ids, text in cases:
        new, (ti, tv) = greedy(model, ids)
        print("prompt %s" % name)
        print("text: %s" % json.dumps(text))
        print("input_ids: %s" % " ".join(map(str, ids)))
        print("top5_ids: %s" % " ".join(map(str, ti)))
        print("top5_logits: %s" % " ".join("%.4f" % v for v in tv))
        print("greedy_ids: %s" % " ".join(map(str, new)))
        print("greedy_text: %s" % json.dumps(tok.decode(new)))


def conventions(path):
    """The checks behind docs/GGUF.md."""
    import gguf
    tok, model = load(path)
    cfg = model.config
    r = gguf.GGUFReader(path)
    raw = {t.name: t for t in r.tensors}
    sd = model.state_dict()

    def deq(name):
        t = raw[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])

    print("config:", {k: getattr(cfg, k, None) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "query_pre_attn_scalar", "sliding_window", "rope_theta", "rope_local_base_freq", "rope_parameters",
        "layer_types", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
        "final_logit_softcapping", "attn_logit_softcapping", "bos_token_id", "eos_token_id", "pad_token_id")})
    for g, h in [("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
                 ("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
                 ("blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
                 ("output_norm.weight", "model.norm.weight")]:
        f, m = deq(g), sd[h].numpy()
        print("%s: file mean %.4f, transformers %s mean %.4f, file - 1 == transformers: %s" %
              (g, f.mean(), h, m.mean(), np.array_equal(f - 1, m)))
    for g, h in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                 ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
                 ("token_embd.weight", "model.embed_tokens.weight")]:
        f, m = deq(g), sd[h].numpy()
        print("%s %s vs %s %s: equal without permutation: %s" % (g, f.shape, h, tuple(m.shape), np.array_equal(f, m)))
    print("lm_head tied to the embedding:", "output.weight" not in raw,
          model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
    # What a Llama-style Q/K row permutation (as llama.cpp applies to Llama) would do here:
    ids = torch.tensor([[2] + encode(tok, PROMPTS[0][1])])
    with torch.no_grad():
        base = model(ids).logits[0, -1]
        for l in model.model.layers:
            for p, n in ((l.self_attn.q_proj, cfg.num_attention_heads), (l.self_attn.k_proj, cfg.num_key_value_heads)):
                w = p.weight.data
                hd = w.shape[0] // n
                p.weight.data = w.reshape(n, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape).clone()
        perm = model(ids).logits[0, -1]
    print("top-5 as loaded:", torch.topk(base, 5).indices.tolist(),
          "| with Llama-style Q/K un-permutation applied:", torch.topk(perm, 5).indices.tolist())


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__)
        return 2
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if "--conventions" in sys.argv:
        conventions(args[0])
    else:
        reference(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
