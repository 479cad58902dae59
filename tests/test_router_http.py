#!/usr/bin/env python3
"""test_router_http.py GEMMAD GEMMA_ROUTER TINY_DIR - gemma-router's OpenAI-compatible HTTP API
(--http-listen) in front of two gemmad replicas (CPU backend, tiny model), with the official
`openai` package.

Checked: /health and /v1/models (the replicas' model name); greedy completions and chat equal to
what a replica answers over its own HTTP API, streamed and not; a list of prompts; usage; errors
(unknown model 404, bad parameters 400, a too-long prompt 400 context_length_exceeded as the
replica says, n above 64, best_of beyond n and echo 400 naming the field); logprobs (both shapes,
streamed and not), penalties and min_tokens passed through the RPC, equal to a replica's own answers;
n > 1 (choices with their indexes, a list of prompts times n, streamed chunks naming their choice,
usage once) and beam search (use_beam_search with best_of / n) equal to a replica's own answer; num_speculative_tokens
passed through (the same text); a client
that disconnects mid-stream has its request cancelled at the replica (its KV blocks come back);
/metrics parsed by prometheus_client; with every replica gone, /health says 503 and a request
is refused, and the router exits cleanly on SIGTERM. Exit 77 only when openai or
prometheus_client cannot be installed."""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemmad_http import Daemon, metric, need_module  # noqa: E402

GEMMAD, ROUTER, TINY = sys.argv[1:4]
openai = need_module("openai", "openai")
need_module("prometheus_client", "prometheus-client")
TIMEOUT = 60.0


class Router(Daemon):
    """gemma-router with --http-listen on a free port (Daemon's helpers for requests and metrics)."""

    def __init__(self, tmp, replicas):  # pylint: disable=super-init-not-called
        self.name = "router"
        self.log = os.path.join(tmp, "router.log")
        args = [ROUTER, "--listen", f"ipc://{tmp}/router.sock", "--http-listen", "127.0.0.1:0",
                "--heartbeat-ms", "100", "--dead-ms", "500"]
        for r in replicas:
            args += ["--replica", r.endpoint]
        with open(self.log, "w") as f:
            self.p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + TIMEOUT
        self.port = None
        while self.port is None:
            assert self.p.poll() is None, self.logtext()
            assert time.time() < deadline, self.logtext()
            m = re.search(r"HTTP API on \S+ \(port (\d+)\)", self.logtext())
            self.port = int(m.group(1)) if m else None
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        while self.request("GET", "/health")[0] != 200:
            assert time.time() < deadline, self.logtext()
            time.sleep(0.05)


def expect(exc, status, fn, param=None, code=None):
    try:
        fn()
    except exc as e:
        assert e.status_code == status, e
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else {}
        if param is not None:
            assert body.get("param") == param, body
        if code is not None:
            assert body.get("code") == code, body
        return
    raise AssertionError(f"expected {exc.__name__}")


def sampling_through(c, direct):
    """logprobs, penalties and min_tokens reach the replicas through the RPC: the router answers what a
    replica answers over its own HTTP API."""
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=10, temperature=0, logprobs=3,
              extra_body={"ignore_eos": True})
    want, got = direct.completions.create(**kw), c.completions.create(**kw)
    assert got.choices[0].logprobs == want.choices[0].logprobs, (got, want)
    first = want.choices[0].logprobs.tokens[0]
    assert len(got.choices[0].logprobs.tokens) == 10
    s = list(c.completions.create(stream=True, **kw))
    parts = [x.choices[0].logprobs for x in s if x.choices and x.choices[0].logprobs]
    assert sum((p.tokens for p in parts), []) == want.choices[0].logprobs.tokens
    assert sum((p.token_logprobs for p in parts), []) == want.choices[0].logprobs.token_logprobs
    assert sum((p.text_offset for p in parts), []) == want.choices[0].logprobs.text_offset
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0,
              logprobs=True, top_logprobs=2)
    want, got = direct.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert got.choices[0].logprobs == want.choices[0].logprobs and len(got.choices[0].logprobs.content) == 6
    s = list(c.chat.completions.create(stream=True, **kw))
    assert [e for x in s if x.choices and x.choices[0].logprobs for e in x.choices[0].logprobs.content] == \
        want.choices[0].logprobs.content
    for extra in ({"presence_penalty": 2.0}, {"frequency_penalty": 1.0}, {"repetition_penalty": 5.0},
                  {"min_tokens": 4, "stop": first}):  # without min_tokens the text would be empty
        kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0, extra_body=extra)
        plain = direct.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0)
        want, got = direct.completions.create(**kw), c.completions.create(**kw)
        assert got.choices[0].text == want.choices[0].text, (extra, got, want)
        if "min_tokens" in extra:
            assert got.usage.completion_tokens >= 4 and got.choices[0].text, got
        else:
            assert got.choices[0].text != plain.choices[0].text, extra  # the penalty did reach the replica


def n_through(c, direct):
    """n > 1 through the RPC: the router answers what a replica answers (seeded, so reproducible)."""
    kw = dict(model="tiny", prompt=["The quick brown fox", "Once upon"], n=2, max_tokens=8, temperature=0.8,
              seed=3, logprobs=1)
    want, got = direct.completions.create(**kw), c.completions.create(**kw)
    assert [ch.index for ch in got.choices] == [0, 1, 2, 3]
    for a, b in zip(got.choices, want.choices):
        assert (a.index, a.text, a.finish_reason, a.logprobs) == (b.index, b.text, b.finish_reason, b.logprobs)
    assert got.usage == want.usage
    assert got.choices[0].text != got.choices[1].text or got.choices[0].logprobs != got.choices[1].logprobs
    s = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    for ch in want.choices:
        mine = [x.choices[0] for x in s if x.choices and x.choices[0].index == ch.index]
        assert "".join(m.text for m in mine) == ch.text, (ch.index, mine)
        assert [m.finish_reason for m in mine if m.finish_reason] == [ch.finish_reason]
    assert s[-1].choices == [] and s[-1].usage == want.usage
    ck = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], n=3, max_tokens=6, temperature=0.8,
              seed=9)
    want, got = direct.chat.completions.create(**ck), c.chat.completions.create(**ck)
    assert [(x.index, x.message.content) for x in got.choices] == [(x.index, x.message.content) for x in want.choices]


def beam_through(c, direct):
    """use_beam_search through the RPC: the router answers what a replica answers; a width outside 2..8
    is a 400 naming the field, from the router's own check."""
    kw = dict(model="tiny", prompt="Once upon a time", n=2, best_of=4, max_tokens=8,
              extra_body={"use_beam_search": True, "length_penalty": 0.5})
    want, got = direct.completions.create(**kw), c.completions.create(**kw)
    assert [(x.index, x.text, x.finish_reason) for x in got.choices] == \
        [(x.index, x.text, x.finish_reason) for x in want.choices]
    assert got.usage == want.usage
    ck = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], n=3, max_tokens=6,
              extra_body={"use_beam_search": True})
    want, got = direct.chat.completions.create(**ck), c.chat.completions.create(**ck)
    assert [(x.index, x.message.content) for x in got.choices] == [(x.index, x.message.content) for x in want.choices]
    sk = dict(model="tiny", prompt="one two three one two three one two", max_tokens=16, temperature=0)
    plain = c.completions.create(**sk, extra_body={"num_speculative_tokens": 0})
    spec = c.completions.create(**sk, extra_body={"num_speculative_tokens": 8})
    assert (spec.choices[0].text, spec.usage) == (plain.choices[0].text, plain.usage)
    for extra, param in [({"use_beam_search": True}, "n"), ({"use_beam_search": True, "best_of": 9}, "best_of")]:
        expect(openai.BadRequestError, 400,
               lambda x=extra: c.completions.create(model="tiny", prompt="a", max_tokens=2, extra_body=x), param=param)


def main():
    with tempfile.TemporaryDirectory(prefix="gd-router-http-") as tmp:
        reps = [Daemon(GEMMAD, tmp, f"rep{i}", "--model", TINY, "--backend", "cpu") for i in range(2)]
        rt = None
        try:
            rt = Router(tmp, reps)
            c = openai.OpenAI(base_url=rt.base + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
            direct = openai.OpenAI(base_url=reps[0].base + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
            assert [m.id for m in c.models.list().data] == ["tiny"]
            # the same answers as a replica's own API
            for prompt in ("The quick brown fox", "Once upon a time"):
                want = direct.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
                got = c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
                assert got.choices[0].text == want.choices[0].text, (got, want)
                assert got.usage.completion_tokens == want.usage.completion_tokens
                s = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
                assert "".join(ch.choices[0].text for ch in s if ch.choices) == want.choices[0].text
                assert s[-1].usage.completion_tokens == want.usage.completion_tokens
            want = direct.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                                  max_tokens=12, temperature=0)
            got = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=12, temperature=0)
            assert got.choices[0].message.content == want.choices[0].message.content
            s = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                               max_tokens=12, temperature=0, stream=True))
            assert s[0].choices[0].delta.role == "assistant"
            assert "".join(ch.choices[0].delta.content or "" for ch in s) == want.choices[0].message.content
            r = c.completions.create(model="tiny", prompt=["alpha", "beta"], max_tokens=5, temperature=0)
            one = direct.completions.create(model="tiny", prompt="beta", max_tokens=5, temperature=0)
            assert [ch.index for ch in r.choices] == [0, 1] and r.choices[1].text == one.choices[0].text
            a = c.completions.create(model="tiny", prompt="seeded", max_tokens=10, temperature=1.0, seed=5)
            b = c.completions.create(model="tiny", prompt="seeded", max_tokens=10, temperature=1.0, seed=5)
            assert a.choices[0].text == b.choices[0].text
            # errors
            expect(openai.NotFoundError, 404, lambda: c.completions.create(model="x", prompt="a", max_tokens=2),
                   param="model", code="model_not_found")
            expect(openai.BadRequestError, 400, lambda: c.completions.create(model="tiny", prompt="a", top_p=7),
                   param="top_p")
            expect(openai.BadRequestError, 400, lambda: c.completions.create(model="tiny", prompt="w " * 3000,
                                                                             max_tokens=2),
                   code="context_length_exceeded")
            for kw, param in [(dict(n=65), "n"), (dict(n=2, best_of=3), "best_of"), (dict(echo=True), "echo")]:
                expect(openai.BadRequestError, 400,
                       lambda: c.completions.create(model="tiny", prompt="a", max_tokens=2, **kw), param=param)
            expect(openai.BadRequestError, 400, lambda: c.completions.create(
                model="tiny", prompt="a", extra_body={"min_tokens": 20}), param="min_tokens")  # > max_tokens 16
            sampling_through(c, direct)
            n_through(c, direct)
            beam_through(c, direct)
            drafts = sum(metric(rep.metrics(), "gemmad_spec_decode_num_drafts_total") or 0 for rep in reps)
            assert drafts > 0, "num_speculative_tokens did not reach a replica"
            st, _, data = rt.request("POST", "/v1/completions", b"{oops")
            assert st == 400 and "error" in json.loads(data)
            st, _, data = rt.request("POST", "/tokenize", {"prompt": "x"})
            assert st == 404, (st, data)
            # a client that leaves mid-stream: the replica cancels it and frees its blocks
            s = socket.create_connection(("127.0.0.1", rt.port), timeout=TIMEOUT)
            body = json.dumps({"prompt": "leave", "max_tokens": 900, "ignore_eos": True, "stream": True}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            got = b""
            while got.count(b"data: ") < 3:
                got += s.recv(4096)
            s.close()
            for rep in reps:
                rep.wait_metric("gemmad_kv_cache_blocks_used", 0)
                rep.wait_metric("gemmad_num_requests_running", 0)
            deadline = time.time() + TIMEOUT
            while metric(rt.metrics(), "gemma_router_requests_in_flight") != 0:
                assert time.time() < deadline
                time.sleep(0.05)
            m = rt.metrics()
            assert metric(m, "gemma_router_replicas_serving") == 2
            assert metric(m, "gemma_router_requests_total") >= 10
            # no replica left: 503 health, requests refused
            for rep in reps:
                assert rep.stop() == 0
            deadline = time.time() + TIMEOUT
            while rt.request("GET", "/health")[0] != 503:
                assert time.time() < deadline
                time.sleep(0.05)
            st, _, data = rt.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
            assert st in (429, 503) and json.loads(data)["error"]["message"], (st, data)
            assert rt.stop() == 0
        except BaseException:
            for d in reps + ([rt] if rt else []):
                print(f"--- {d.name}\n{d.logtext()[-3000:]}")
            raise
        finally:
            for d in reps + ([rt] if rt else []):
                d.kill()
    print("ok")


if __name__ == "__main__":
    main()
