#!/usr/bin/env python3
"""test_http_openai.py GEMMAD GEMMA_GENERATE TINY_DIR TINY_GEMMA3_DIR GEMMA_CLI - the official `openai`
package against gemmad's OpenAI-compatible HTTP API (--http-listen) on the CPU backend.

Checked with the unmodified client: /v1/models; completions and chat, greedy and seeded, equal byte
for byte to gemma-generate's output for the same request; streaming (the deltas add up to the
non-streamed text, chat's first delta carries the role, include_usage adds the usage chunk);
stop strings; seed reproducibility; usage in every response; token-id prompts, a list of prompts
(one choice each), echo; completions' default max_tokens (16, as vLLM); a system message (Gemma 3
puts it at the start of the first user turn, equal to writing it there; Gemma 1 refuses it: 400);
errors as the SDK's typed exceptions with OpenAI's status and body (unknown model 404, bad
parameters 400 naming the parameter, a prompt longer than the context 400
context_length_exceeded, n > 64 400 naming n, best_of > n 400 naming best_of, echo with logprobs 400 naming
echo); logprobs in
OpenAI's two shapes, streamed and not, equal to the RPC's (gemma-cli --print-logprobs) for the same
greedy request, each greedy token its own first alternative; presence, frequency and repetition
penalties changing greedy output to what gemma-generate gives with the same flags; min_tokens
holding back a stop id and a stop string; n > 1 (choices[i] with index i, choice i what gemma-generate
gives with seed + i and its own logprobs, streamed chunks naming their choice with one finish_reason
each, usage once: prompt tokens counted once, completion tokens summed; a list of prompts times n;
greedy choices equal; penalties per choice); and the daemon still serving afterwards. Exit 77 only when
the openai package cannot be installed."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemmad_http import need_module, serving  # noqa: E402

GEMMAD, GENERATE, TINY, TINY3, CLI = sys.argv[1:6]
openai = need_module("openai", "openai")


def gemma_generate(model, *args):
    p = subprocess.run([GENERATE, "--model", model, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n")
    return p.stdout[:-1]


def client(d, **kw):
    return openai.OpenAI(base_url=d.base + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60,
                         **kw)


def expect_error(exc_type, status, fn, param=None, code=None):
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, (e.status_code, e)
        body = e.body if isinstance(e.body, dict) else {}
        body = body.get("error", body)  # the SDK hands back the error object or the whole body
        assert "message" in body and "type" in body, e.body
        if param is not None:
            assert body.get("param") == param, (body, param)
        if code is not None:
            assert body.get("code") == code, (body, code)
        return body
    raise AssertionError(f"expected {exc_type.__name__} ({status})")


def test_models(c):
    ms = c.models.list()
    assert [m.id for m in ms.data] == ["tiny"], ms


def test_completions(c):
    for prompt, temp, seed in [("The quick brown fox", 0.0, 0), ("Once upon a time", 0.8, 7)]:
        want = gemma_generate(TINY, "--prompt", prompt, "--max-tokens", "20", "--temperature", str(temp),
                              "--seed", str(seed))
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=temp, seed=seed)
        assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
        assert r.choices[0].text == want, (r.choices[0].text, want)
        assert r.choices[0].finish_reason in ("length", "stop")
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 2
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        # streaming: the deltas add up to the same text; include_usage gives the same usage
        chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=temp, seed=seed,
                                           stream=True, stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        assert text == want, (text, want)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finals == [r.choices[0].finish_reason], finals
        assert all(ch.usage is None for ch in chunks[:-1])
        assert len({ch.id for ch in chunks}) == 1
    # seeded sampling is reproducible, another seed differs
    a = c.completions.create(model="tiny", prompt="Seeds", max_tokens=24, temperature=1.0, seed=11)
    b = c.completions.create(model="tiny", prompt="Seeds", max_tokens=24, temperature=1.0, seed=11)
    z = c.completions.create(model="tiny", prompt="Seeds", max_tokens=24, temperature=1.0, seed=12)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].text != z.choices[0].text
    # no max_tokens: 16, as vLLM's (and OpenAI's) completions default
    r = c.completions.create(model="tiny", prompt="Default length", temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16, r.usage


def test_stop(c):
    full = c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=20, temperature=0)
    t = full.choices[0].text
    assert len(t) > 6, t
    cut = t[3:6]
    for stop in (cut, [cut, "\u00a7never\u00a7"]):
        r = c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=20, temperature=0, stop=stop)
        assert r.choices[0].finish_reason == "stop", r
        assert r.choices[0].text == t[:t.index(cut)], (r.choices[0].text, cut)
        s = list(c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=20, temperature=0,
                                      stop=stop, stream=True))
        assert "".join(ch.choices[0].text for ch in s) == r.choices[0].text
        assert s[-1].choices[0].finish_reason == "stop"


def test_speculative(c, d):
    """num_speculative_tokens: the same text with speculation off and on (docs/SPECULATIVE.md), the drafts
    counted in /metrics; out of range is a 400 naming it."""
    prompt = "one two three one two three one two three one two"
    for temp in (0, 0.8):
        off = c.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=temp, seed=3,
                                   extra_body={"num_speculative_tokens": 0})
        on = c.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=temp, seed=3,
                                  extra_body={"num_speculative_tokens": 6})
        assert on.choices[0].text == off.choices[0].text, (on.choices[0].text, off.choices[0].text)
        assert on.usage.completion_tokens == off.usage.completion_tokens
        # streamed: several tokens may come in one event; the text is the same
        chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=temp, seed=3,
                                           stream=True, extra_body={"num_speculative_tokens": 6}))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == off.choices[0].text
        assert [ch for ch in chunks if ch.choices][-1].choices[0].finish_reason == off.choices[0].finish_reason
    status, _, body = d.request("GET", "/metrics")
    assert status == 200
    drafted = [l for l in body.decode().splitlines() if l.startswith("gemmad_spec_decode_num_draft_tokens_total ")]
    assert drafted and float(drafted[0].split()[1]) > 0, drafted
    expect_error(openai.BadRequestError, 400, lambda: c.completions.create(
        model="tiny", prompt="x", extra_body={"num_speculative_tokens": 17}), param="num_speculative_tokens")


def test_prompt_forms(c):
    ids = [2, 651, 432, 842]
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    one = c.completions.create(model="tiny", prompt="alpha", max_tokens=6, temperature=0).choices[0].text
    two = c.completions.create(model="tiny", prompt="beta", max_tokens=6, temperature=0).choices[0].text
    r = c.completions.create(model="tiny", prompt=["alpha", "beta"], max_tokens=6, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert [ch.text for ch in r.choices] == [one, two], r
    both = list(c.completions.create(model="tiny", prompt=["alpha", "beta"], max_tokens=6, temperature=0, stream=True))
    per = {0: "", 1: ""}
    for ch in both:
        for choice in ch.choices:
            per[choice.index] += choice.text
    assert per == {0: one, 1: two}, per
    r = c.completions.create(model="tiny", prompt=[ids, ids], max_tokens=4, temperature=0)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text
    r = c.completions.create(model="tiny", prompt="alpha", max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == "alpha" + one, r


def test_chat(c):
    want = gemma_generate(TINY, "--chat", "--prompt", "Hello there", "--max-tokens", "16")
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                  max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want, (r.choices[0].message.content, want)
    assert r.usage.completion_tokens >= 1
    r2 = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                   max_completion_tokens=16, temperature=0)
    assert r2.choices[0].message.content == want
    s = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=16, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert s[0].object == "chat.completion.chunk" and s[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == want
    assert s[-1].usage.total_tokens == r.usage.total_tokens
    # a conversation: alternating turns are accepted
    r = c.chat.completions.create(model="tiny", max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
    assert r.choices[0].message.content is not None
    # Gemma 1 has no system role: the template refuses it, so does gemmad
    expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model="tiny", max_tokens=4, messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}]), param="messages")
    expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        param="messages[1].role")


def test_errors(c):
    expect_error(openai.NotFoundError, 404, lambda: c.completions.create(model="gpt-4", prompt="x", max_tokens=2),
                 param="model", code="model_not_found")
    bad = [
        (dict(temperature=5), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-3), "max_tokens"),
        (dict(n=0), "n"),
        (dict(stop=["x"] * 40), "stop"),
        (dict(extra_body={"top_k": "many"}), "top_k"),
    ]
    for kw, param in bad:
        expect_error(openai.BadRequestError, 400,
                     lambda: c.completions.create(model="tiny", prompt="x", **{"max_tokens": 2, **kw}), param=param)
    # longer than the context (1024 tokens)
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt="word " * 3000, max_tokens=2),
                 param="prompt", code="context_length_exceeded")
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt=[5] * 2000, max_tokens=2),
                 code="context_length_exceeded")
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt=[5] * 1020, max_tokens=16),
                 code="context_length_exceeded")  # prompt + max_tokens past the context, as vLLM
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt=[1 << 20], max_tokens=2))
    # n past what gemmad generates, best_of beyond n, bad sampling extensions: refused by name
    for kw, param in [(dict(n=65), "n"), (dict(n=200), "n"), (dict(n=2, best_of=3), "best_of"),
                      (dict(presence_penalty=2.5), "presence_penalty"),
                      (dict(frequency_penalty=-3), "frequency_penalty"), (dict(logprobs=21), "logprobs"),
                      (dict(extra_body={"min_tokens": 5}), "min_tokens"),  # more than max_tokens
                      (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
                      (dict(echo=True, logprobs=1), "echo")]:  # no prompt logprobs
        expect_error(openai.BadRequestError, 400,
                     lambda: c.completions.create(model="tiny", prompt="x", max_tokens=4, **kw), param=param)
    # min_tokens past the default max_tokens (16): admission names it
    expect_error(openai.BadRequestError, 400, lambda: c.completions.create(
        model="tiny", prompt="x", extra_body={"min_tokens": 20}), param="min_tokens")
    for kw, param in [(dict(n=65), "n"), (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
                      (dict(top_logprobs=2), "top_logprobs")]:  # top_logprobs without logprobs
        expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(
            model="tiny", max_tokens=2, messages=[{"role": "user", "content": "x"}], **kw), param=param)
    expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model="tiny", max_tokens=2, messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": "f"}}]), param="tools")
    # a streaming request refused before it starts is a plain error answer
    expect_error(openai.BadRequestError, 400, lambda: list(c.completions.create(
        model="tiny", prompt="x", max_tokens=2, temperature=9, stream=True)), param="temperature")
    # still serving
    assert c.completions.create(model="tiny", prompt="still", max_tokens=2).usage.completion_tokens >= 1


def rpc_logprobs(d, *args):
    """The RPC's logprobs for a greedy request: gemma-cli --print-logprobs, one dict per token."""
    p = subprocess.run([CLI, "--endpoint", d.endpoint, "--print-logprobs", *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def check_rpc_equal(entries, rpc):
    """HTTP logprobs entries (token, logprob, [(token, logprob)]) equal the RPC's, number for number."""
    assert len(entries) == len(rpc), (len(entries), len(rpc))
    for (tok, lp, top), want in zip(entries, rpc):
        assert tok == want["token"] and lp == want["logprob"], (tok, lp, want)
        assert top == [(t["token"], t["logprob"]) for t in want["top_logprobs"]], (top, want)


def test_logprobs(c, d):
    prompt = "The quick brown fox"
    rpc = rpc_logprobs(d, "--max-tokens", "12", "--ignore-eos", "--logprobs", "3", prompt)
    # completions: logprobs N -> tokens, token_logprobs, top_logprobs (dicts), text_offset
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=3,
                             extra_body={"ignore_eos": True})
    ch = r.choices[0]
    lp = ch.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12, lp
    assert "".join(lp.tokens) == ch.text, (lp.tokens, ch.text)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(12)], lp.text_offset
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and top[tok] == val == max(top.values()) and val <= 0, (tok, val, top)
    assert [(t["token"], t["logprob"]) for t in rpc] == list(zip(lp.tokens, lp.token_logprobs))
    assert [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in rpc] == lp.top_logprobs
    # streamed: the chunks' logprobs add up to the same, text_offset running on
    s = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=3, stream=True,
                                  extra_body={"ignore_eos": True}))
    parts = [x.choices[0].logprobs for x in s if x.choices and x.choices[0].logprobs]
    assert sum((p.tokens for p in parts), []) == lp.tokens
    assert sum((p.token_logprobs for p in parts), []) == lp.token_logprobs
    assert sum((p.top_logprobs for p in parts), []) == lp.top_logprobs
    assert sum((p.text_offset for p in parts), []) == lp.text_offset
    # logprobs 0: the chosen token alone in each dict (OpenAI: up to logprobs + 1 entries)
    r0 = c.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0, logprobs=0)
    assert r0.choices[0].logprobs.top_logprobs == [{t: v} for t, v in zip(lp.tokens[:4], lp.token_logprobs[:4])]
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None
    # chat: logprobs + top_logprobs -> content[] of {token, logprob, bytes, top_logprobs}
    msgs = [{"role": "user", "content": "Hello there"}]
    rpc = rpc_logprobs(d, "--chat", "--max-tokens", "10", "--logprobs", "2", "Hello there")
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, logprobs=True,
                                  top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == len(rpc)
    for e in content:
        assert bytes(e.bytes) == e.token.encode() and len(e.top_logprobs) == 2, e
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob, e
        assert all(bytes(t.bytes) == t.token.encode() for t in e.top_logprobs)
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":  # the token that ended the turn has its entry, as in vLLM
        assert content[-1].token in ("<end_of_turn>", "<eos>"), content[-1]
        content = content[:-1]
    assert b"".join(bytes(e.bytes) for e in content).decode() == text
    check_rpc_equal([(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs])
                     for e in r.choices[0].logprobs.content], rpc)
    s = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=2, stream=True))
    streamed = [e for x in s if x.choices and x.choices[0].logprobs for e in x.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in r.choices[0].logprobs.content]
    # logprobs without alternatives: empty top_logprobs
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=3, temperature=0, logprobs=True)
    assert [e.top_logprobs for e in r.choices[0].logprobs.content] == [[], [], []]
    assert [e.logprob for e in r.choices[0].logprobs.content] == [t["logprob"] for t in rpc[:3]]


def test_penalties_min_tokens(c, d):
    prompt = "The quick brown fox"
    base = c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    for flag, kw, v in [("--presence-penalty", dict(presence_penalty=2.0), "2"),
                        ("--frequency-penalty", dict(frequency_penalty=1.0), "1"),
                        ("--repetition-penalty", dict(extra_body={"repetition_penalty": 5.0}), "5")]:
        want = gemma_generate(TINY, "--prompt", prompt, "--max-tokens", "16", flag, v)
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, **kw)
        assert r.choices[0].text == want != base, (kw, r.choices[0].text, want, base)
        s = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True, **kw))
        assert "".join(x.choices[0].text for x in s) == want
    want = gemma_generate(TINY, "--chat", "--prompt", "Hi", "--max-tokens", "12", "--presence-penalty", "2")
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=12,
                                  temperature=0, presence_penalty=2.0)
    assert r.choices[0].message.content == want, (r.choices[0].message.content, want)
    # min_tokens: the first greedy token as a stop id ends the output at once; min_tokens holds it back
    first = rpc_logprobs(d, "--max-tokens", "1", prompt)[0]
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0,
                             extra_body={"stop_token_ids": [first["id"]]})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1 and r.choices[0].text == "", r
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=0,
                             extra_body={"stop_token_ids": [first["id"]], "min_tokens": 4})
    ids = [t["id"] for t in rpc_logprobs(d, "--max-tokens", "8", "--stop-id", str(first["id"]), "--min-tokens", "4",
                                         prompt)]
    assert len(ids) >= 4 and first["id"] not in ids[:4], ids
    assert r.usage.completion_tokens == len(ids) and r.choices[0].text != "", (r, ids)
    assert r.choices[0].logprobs.tokens[0] != first["token"], r
    # and a stop string: not looked for before min_tokens outputs
    cut = first["token"]
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stop=cut)
    assert r.choices[0].text == "" and r.usage.completion_tokens == 1, r
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stop=cut,
                             extra_body={"min_tokens": 4})
    assert r.usage.completion_tokens >= 4 and len(r.choices[0].text) >= 3 * len(cut), r


def by_index(chunks):
    """Streamed chunks -> {index: (text, [finish_reason...], [logprobs parts])}; each chunk names one choice."""
    out = {}
    for ch in chunks:
        for c in ch.choices:
            t, fins, lps = out.setdefault(c.index, ["", [], []])
            delta = c.text if hasattr(c, "text") else (c.delta.content or "")
            out[c.index][0] = t + delta
            if c.finish_reason is not None:
                fins.append(c.finish_reason)
            if c.logprobs is not None:
                lps.append(c.logprobs)
    return out


def test_n(c):
    prompt, seed = "Once upon a time", 7
    kw = dict(model="tiny", prompt=prompt, max_tokens=12, temperature=0.8, seed=seed)
    r = c.completions.create(n=2, logprobs=2, **kw)
    assert [ch.index for ch in r.choices] == [0, 1], r
    lone = [c.completions.create(logprobs=2, **{**kw, "seed": seed + i}) for i in range(2)]
    for i, ch in enumerate(r.choices):  # choice i: seed + i, its own tokens and logprobs
        want = gemma_generate(TINY, "--prompt", prompt, "--max-tokens", "12", "--temperature", "0.8", "--seed",
                              str(seed + i))
        assert ch.text == want == lone[i].choices[0].text, (i, ch.text, want)
        assert ch.finish_reason == lone[i].choices[0].finish_reason
        assert ch.logprobs.tokens == lone[i].choices[0].logprobs.tokens
        assert ch.logprobs.token_logprobs == lone[i].choices[0].logprobs.token_logprobs
        assert ch.logprobs.top_logprobs == lone[i].choices[0].logprobs.top_logprobs
    assert r.choices[0].logprobs.tokens != r.choices[1].logprobs.tokens  # distinct seeds, distinct draws
    assert r.usage.prompt_tokens == lone[0].usage.prompt_tokens  # the prompt counted once
    total = sum(x.usage.completion_tokens for x in lone)
    assert r.usage.completion_tokens == total == sum(len(ch.logprobs.tokens) for ch in r.choices)
    # streamed: every chunk names its choice, each choice ends once, the usage comes once at the end
    s = list(c.completions.create(n=2, logprobs=2, stream=True, stream_options={"include_usage": True}, **kw))
    got = by_index(s)
    assert sorted(got) == [0, 1], got
    for i in range(2):
        text, fins, lps = got[i]
        assert text == r.choices[i].text and fins == [r.choices[i].finish_reason], (i, text, fins)
        assert sum((p.tokens for p in lps), []) == r.choices[i].logprobs.tokens
        assert sum((p.text_offset for p in lps), []) == r.choices[i].logprobs.text_offset
    assert s[-1].choices == [] and s[-1].usage.completion_tokens == total
    assert s[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert all(x.usage is None for x in s[:-1])
    # a list of prompts times n: prompt p's choices are p * n .. p * n + n - 1
    r2 = c.completions.create(model="tiny", prompt=["The quick brown fox", prompt], n=2, max_tokens=6,
                              temperature=0.8, seed=seed)
    assert [ch.index for ch in r2.choices] == [0, 1, 2, 3]
    one = c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0.8, seed=seed + 1)
    assert r2.choices[3].text == one.choices[0].text
    assert r2.usage.prompt_tokens == c.completions.create(
        model="tiny", prompt=["The quick brown fox", prompt], max_tokens=1).usage.prompt_tokens
    # greedy: every choice the same
    g = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, n=3)
    assert len({ch.text for ch in g.choices}) == 1 and len(g.choices) == 3
    # chat, streamed: each choice opens with the role and ends once
    msgs = [{"role": "user", "content": "Hello there"}]
    ck = dict(model="tiny", messages=msgs, max_tokens=10, temperature=0.8, seed=seed)
    r = c.chat.completions.create(n=2, **ck)
    assert [ch.index for ch in r.choices] == [0, 1]
    s = list(c.chat.completions.create(n=2, stream=True, **ck))
    got = by_index(s)
    for i in range(2):
        roles = [x.choices[0].delta.role for x in s if x.choices and x.choices[0].index == i and x.choices[0].delta.role]
        assert roles == ["assistant"], (i, roles)
        assert got[i][0] == r.choices[i].message.content and got[i][1] == [r.choices[i].finish_reason]
        assert got[i][0] == c.chat.completions.create(**{**ck, "seed": seed + i}).choices[0].message.content
    # penalties per choice: choice i is gemma-generate's with seed + i and the same penalty
    r = c.completions.create(n=2, presence_penalty=1.5, **kw)
    for i in range(2):
        want = gemma_generate(TINY, "--prompt", prompt, "--max-tokens", "12", "--temperature", "0.8", "--seed",
                              str(seed + i), "--presence-penalty", "1.5")
        assert r.choices[i].text == want, (i, r.choices[i].text, want)


def test_gemma3_system(tmp):
    with serving(GEMMAD, tmp, "g3", "--model", TINY3, "--backend", "cpu", "--served-model-name", "g3-tiny") as d:
        c = client(d)
        assert [m.id for m in c.models.list().data] == ["g3-tiny"]
        sysmsg = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        folded = [{"role": "user", "content": "Be brief.\n\nHi there"}]
        a = c.chat.completions.create(model="g3-tiny", messages=sysmsg, max_tokens=8, temperature=0)
        b = c.chat.completions.create(model="g3-tiny", messages=folded, max_tokens=8, temperature=0)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage.prompt_tokens == b.usage.prompt_tokens
        # the developer role is the newer name for system
        dev = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        e = c.chat.completions.create(model="g3-tiny", messages=dev, max_tokens=8, temperature=0)
        assert e.choices[0].message.content == a.choices[0].message.content
        st, t1 = d.post_json("/tokenize", {"messages": sysmsg})
        st2, t2 = d.post_json("/tokenize", {"messages": folded})
        assert st == st2 == 200 and t1["tokens"] == t2["tokens"] and t1["count"] == a.usage.prompt_tokens
        st, t3 = d.post_json("/tokenize", {"messages": folded, "add_generation_prompt": False})
        assert st == 200 and t3["tokens"] == t2["tokens"][:len(t3["tokens"])] and t3["count"] < t2["count"]


def test_tokenize(d):
    st, t = d.post_json("/tokenize", {"prompt": "Hello world", "model": "tiny"})
    assert st == 200 and t["tokens"][0] == 2 and t["count"] == len(t["tokens"]) and t["max_model_len"] == 1024
    st, t2 = d.post_json("/tokenize", {"prompt": "Hello world", "add_special_tokens": False})
    assert st == 200 and t2["tokens"] == t["tokens"][1:]
    st, dt = d.post_json("/detokenize", {"tokens": t["tokens"]})
    assert st == 200 and dt["prompt"].strip() == "Hello world", dt
    st, e = d.post_json("/detokenize", {"tokens": [5000000]})
    assert st == 400 and e["error"]["param"] == "tokens"
    st, e = d.post_json("/tokenize", {"prompt": "x", "model": "other"})
    assert st == 404 and e["error"]["code"] == "model_not_found"


def main():
    with tempfile.TemporaryDirectory(prefix="gd-http-oai-") as tmp:
        with serving(GEMMAD, tmp, "tiny", "--model", TINY, "--backend", "cpu") as d:
            c = client(d)
            test_models(c)
            test_completions(c)
            test_stop(c)
            test_prompt_forms(c)
            test_chat(c)
            test_errors(c)
            test_tokenize(d)
            test_logprobs(c, d)
            test_penalties_min_tokens(c, d)
            test_n(c)
            test_speculative(c, d)
            assert d.request("GET", "/health")[0] == 200
        test_gemma3_system(tmp)
    print("ok")

if __name__ == "__main__":
    main()
