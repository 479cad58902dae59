#!/usr/bin/env python3
"""test_http_serve.py GEMMAD TINY_DIR - gemmad's HTTP front door under curl, prometheus_client and
hostile clients.

On the CPU backend with the tiny model:
  * curl: a streamed completion is server-sent events exactly (text/event-stream, no-cache,
    chunked; `data: {json}` + blank line per event, ids equal, `data: [DONE]` last);
  * /metrics parsed by prometheus_client after known traffic: success count, prompt and generation
    token counters, per-request histograms (+Inf bucket = count, cumulative buckets), failures by
    code, idle gauges, all equal to what the clients saw;
  * bad input, each a 4xx with an OpenAI-shaped body and the daemon serving on: malformed JSON,
    wrong types, absurd values, unknown fields (ignored: 200), deep nesting, NUL bytes, malformed
    HTTP, a body over the limit (413), a client sending its headers one byte at a time;
  * a client that stops reading mid-stream does not hold up the others; one that vanishes
    mid-stream is cancelled and its KV blocks come back (gemmad_kv_cache_blocks_used, abort count);
  * prompts tokenized off the loop: one too long once tokenized is a 400, streamed or not, beside
    other prompts or with n > 1; n > 1 over two prompts streams every choice.
While the workers start (a worker that sleeps first): /health 503, generation 503 `unavailable`.
On the null backend (token-id prompts, GM_NULL_STEP_US slowing each step): bearer auth from a key
file (401 on /v1/ without it, /health and /metrics open), --http-max-requests answering 429
(code overloaded) and serving again once a slot is free, and a drain on SIGTERM (/health 503, new
requests 503, the stream in flight finishing with [DONE], exit 0).
Exit 77 only when prometheus_client cannot be installed."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemmad_http import Daemon, metric, need_module, serving  # noqa: E402

GEMMAD, TINY = sys.argv[1:3]
need_module("prometheus_client", "prometheus-client")
TIMEOUT = 30.0


def raw(port, data, read=True, timeout=TIMEOUT):
    """Send bytes on a fresh socket; the whole answer until the server closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        s.settimeout(2.0)
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except socket.timeout:
            pass
        return out
    finally:
        s.close()


def http_post(path, body, extra=b""):
    if isinstance(body, str):
        body = body.encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def stream_open(port, body, path="/v1/completions", headers=b""):
    """A streaming request on a raw socket; returns the socket after the response headers arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(http_post(path, json.dumps(body), headers))
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, f"closed before headers: {head!r}"
        head += b
    return s, head.decode()


def check_error_body(status, body, want_status=None):
    assert 400 <= status < 500, (status, body)
    if want_status:
        assert status == want_status, (status, body)
    e = json.loads(body)["error"]
    assert isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str), e
    assert "param" in e and "code" in e, e
    return e


def test_curl_sse(d):
    curl = shutil.which("curl")
    assert curl, "curl is needed (scripts/deps.sh installs it)"
    body = json.dumps({"model": "tiny", "prompt": "Server-sent", "max_tokens": 12, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    p = subprocess.run([curl, "-sS", "-N", "--max-time", "60", "-D", "-", "-H", "Content-Type: application/json",
                        "-d", body, d.base + "/v1/completions"], capture_output=True, timeout=90)
    assert p.returncode == 0, p.stderr
    head, _, payload = p.stdout.partition(b"\r\n\r\n")
    h = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head.decode().split("\r\n")[1:])}
    assert head.startswith(b"HTTP/1.1 200"), head
    assert h["content-type"] == "text/event-stream; charset=utf-8", h
    assert h["cache-control"] == "no-cache", h
    assert h.get("transfer-encoding") == "chunked", h
    assert payload.endswith(b"data: [DONE]\n\n"), payload[-200:]
    assert b"\r" not in payload
    events = payload.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    ids, text, usage = set(), "", None
    for ev in events[:-1]:
        assert ev.startswith(b"data: ") and b"\n" not in ev, ev
        j = json.loads(ev[6:])
        ids.add(j["id"])
        assert j["object"] == "text_completion" and j["model"] == "tiny"
        if j["choices"]:
            text += j["choices"][0]["text"]
        else:
            usage = j["usage"]
    assert len(ids) == 1 and usage and usage["completion_tokens"] >= 1, (ids, usage)
    st, r = d.post_json("/v1/completions", {"prompt": "Server-sent", "max_tokens": 12, "temperature": 0})
    assert st == 200 and r["choices"][0]["text"] == text and r["usage"] == usage, (r, text, usage)


def test_metrics(d):
    m0 = d.metrics()
    n, prompt, gen = 0, 0, 0
    for i in range(6):
        st, r = d.post_json("/v1/completions", {"prompt": f"count {i}", "max_tokens": 3 + i, "temperature": 0})
        assert st == 200, r
        n, prompt, gen = n + 1, prompt + r["usage"]["prompt_tokens"], gen + r["usage"]["completion_tokens"]
    st, r = d.post_json("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert st == 200, r
    n, prompt, gen = n + 1, prompt + r["usage"]["prompt_tokens"], gen + r["usage"]["completion_tokens"]
    m = d.metrics()

    def delta(name, **labels):
        return metric(m, name, **labels) - metric(m0, name, **labels)

    ok = delta("gemmad_request_success_total", finished_reason="stop") + \
        delta("gemmad_request_success_total", finished_reason="length")
    assert ok == n, ok
    assert delta("gemmad_prompt_tokens_total") == prompt
    assert delta("gemmad_generation_tokens_total") == gen
    assert delta("gemmad_request_generation_tokens_sum") == gen
    assert delta("gemmad_request_prompt_tokens_sum") == prompt
    for h in ("gemmad_e2e_request_latency_seconds", "gemmad_time_to_first_token_seconds",
              "gemmad_request_queue_time_seconds", "gemmad_request_prompt_tokens"):
        assert delta(h + "_count") == n, h
        assert metric(m, h + "_bucket", le="+Inf") == metric(m, h + "_count"), h
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m.items() if k[0] == h + "_bucket"))
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert metric(m, h + "_sum") >= 0
    assert metric(m, "gemmad_num_requests_running") == 0 and metric(m, "gemmad_num_requests_waiting") == 0
    assert metric(m, "gemmad_kv_cache_blocks_used") == 0 and metric(m, "gemmad_kv_cache_usage_perc") == 0
    assert metric(m, "gemmad_kv_cache_blocks_total") > 0
    assert metric(m, "gemmad_info", version=metric_label(m, "gemmad_info", "version"), model="tiny", backend="cpu",
                  tp="1") == 1
    assert metric(m, "gemmad_engine_steps_total") >= gen / 8
    # failures by code
    d.post_json("/v1/completions", {"prompt": "x", "temperature": -1})
    d.post_json("/v1/completions", {"prompt": [5] * 3000, "max_tokens": 2})
    m2 = d.metrics()
    assert metric(m2, "gemmad_request_failure_total", code="invalid_argument") - \
        metric(m, "gemmad_request_failure_total", code="invalid_argument") == 1
    assert metric(m2, "gemmad_request_failure_total", code="prompt_too_long") - \
        metric(m, "gemmad_request_failure_total", code="prompt_too_long") == 1


def metric_label(m, name, label):
    for (n, labels), _ in m.items():
        if n == name:
            return dict(labels)[label]
    raise AssertionError(f"{name} missing")


def test_bad_input(d):
    cases = [
        ("/v1/completions", b"{bad", 400),
        ("/v1/completions", b"[1, 2]", 400),
        ("/v1/completions", b"", 400),
        ("/v1/completions", b'{"prompt": 5}', 400),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400),
        ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 1000000000000}', 400),
        ("/v1/completions", b'{"prompt": "x", "temperature": 1e308}', 400),
        ("/v1/completions", b'{"prompt": "x", "top_k": -5}', 400),
        ("/v1/completions", b'{"prompt": "x", "seed": 1e30}', 400),
        ("/v1/completions", b'{"prompt": "x", "n": 1000000}', 400),
        ("/v1/completions", b'{"prompt": "x", "stop": "' + b"s" * 1000 + b'"}', 400),
        ("/v1/completions", b'{"prompt": ""}', 400),
        ("/v1/completions", b'{"prompt": []}', 400),
        ("/v1/completions", b'{"prompt": [[]]}', 400),
        ("/v1/completions", b'{"prompt": [-1]}', 400),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 4096}', 400),
        ("/v1/completions", b"[" * 100000 + b"]" * 100000, 400),
        ("/v1/completions", b'{"prompt": "a\x00b"}', 400),
        ("/v1/chat/completions", b'{"messages": "hi"}', 400),
        ("/v1/chat/completions", b'{"messages": []}', 400),
        ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', 400),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
        ("/tokenize", b'{"prompt": 7}', 400),
        ("/detokenize", b'{"tokens": "abc"}', 400),
    ]
    for path, body, want in cases:
        st, hdrs, data = d.request("POST", path, body, {"Content-Type": "application/json"})
        e = check_error_body(st, data, want)
        assert hdrs["content-type"] == "application/json", hdrs
        assert e["type"] == "invalid_request_error", (path, body[:60], e)
    # unknown fields are ignored, as OpenAI does
    st, r = d.post_json("/v1/completions", {"prompt": "x", "max_tokens": 2, "frobnicate": {"a": [1, None]}})
    assert st == 200 and r["usage"]["completion_tokens"] >= 1, r
    # invalid UTF-8 inside a JSON string: a clean answer, never a crash
    st, _, data = d.request("POST", "/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}')
    assert st in (200, 400), (st, data)
    # wrong method, unknown path
    st, hdrs, data = d.request("GET", "/v1/chat/completions")
    check_error_body(st, data, 405)
    assert hdrs["allow"] == "POST"
    check_error_body(*d.request("GET", "/v2/everything")[::2], 404)
    # malformed HTTP: libmicrohttpd answers 400
    out = raw(d.port, b"GARBAGE / NOTHTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") or out == b"", out[:100]
    out = raw(d.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 4") or out == b"", out[:100]
    # a body over the 8 MiB limit: 413 from the declared length
    # (answered from the declared length before the body is read: send the headers and a little)
    out = raw(d.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{\"prompt\": \"xx"
              % (9 << 20))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), out[:200]
    e = check_error_body(413, body, 413)
    assert e["code"] == "request_too_large", e
    # a client trickling its headers one byte at a time holds up nobody
    slow = socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT)
    req = http_post("/v1/completions", '{"prompt": "slow", "max_tokens": 2}')
    for b in req[:40]:
        slow.send(bytes([b]))
        st, r = d.post_json("/v1/completions", {"prompt": "fast", "max_tokens": 2}) if b == req[0] else (200, None)
        assert st == 200, r
        time.sleep(0.01)
    slow.sendall(req[40:])
    assert slow.recv(12).startswith(b"HTTP/1.1 200")
    slow.close()
    st, r = d.post_json("/v1/completions", {"prompt": "still here", "max_tokens": 2})
    assert st == 200, r


def test_slow_and_vanishing(d):
    m0 = d.metrics()
    aborts0 = metric(m0, "gemmad_request_success_total", finished_reason="abort")
    # a reader that never reads: others are served meanwhile
    stalled, head = stream_open(d.port, {"prompt": "stall", "max_tokens": 900, "stream": True, "ignore_eos": True})
    assert head.startswith("HTTP/1.1 200"), head
    for i in range(3):
        st, r = d.post_json("/v1/completions", {"prompt": f"meanwhile {i}", "max_tokens": 4})
        assert st == 200, r
    # a client that reads a little, then vanishes
    gone, head = stream_open(d.port, {"prompt": "vanish", "max_tokens": 900, "stream": True, "ignore_eos": True})
    got = b""
    while got.count(b"data: ") < 3:
        got += gone.recv(4096)
    assert metric(d.metrics(), "gemmad_kv_cache_blocks_used") > 0
    gone.close()
    stalled.close()
    d.wait_metric("gemmad_request_success_total", aborts0 + 2, {"finished_reason": "abort"})
    d.wait_metric("gemmad_num_requests_running", 0)
    # one that asks for a whole (non-streamed) answer and leaves while it is made
    quitter = socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT)
    quitter.sendall(http_post("/v1/completions", json.dumps({"prompt": "quit", "max_tokens": 900,
                                                             "ignore_eos": True})))
    deadline = time.time() + TIMEOUT
    while metric(d.metrics(), "gemmad_num_requests_running") < 1:
        assert time.time() < deadline
        time.sleep(0.01)
    quitter.close()
    d.wait_metric("gemmad_request_success_total", aborts0 + 3, {"finished_reason": "abort"})
    d.wait_metric("gemmad_kv_cache_blocks_used", 0)
    d.wait_metric("gemmad_num_requests_running", 0)
    st, r = d.post_json("/v1/completions", {"prompt": "after", "max_tokens": 3})
    assert st == 200, r


def read_stream(s):
    """The rest of a streamed answer (after its headers) until [DONE] and the last chunk."""
    got = b""
    while not (b"data: [DONE]\n\n" in got and got.endswith(b"\r\n0\r\n\r\n")):
        chunk = s.recv(65536)
        assert chunk, got[-300:]
        got += chunk
    s.close()
    return got


def test_admitted_later(d):
    """Text and chat prompts are tokenized off the loop: admission completes after the request came in.
    A prompt too long for the context once tokenized is still an HTTP 400 (context_length_exceeded),
    streamed or not, alone or beside another prompt; a stream's headers wait for that."""
    long_text = "x " * 1500  # within the byte limit, past the 1024-token context
    cases = [
        ("/v1/completions", {"prompt": long_text}),
        ("/v1/completions", {"prompt": long_text, "stream": True}),
        ("/v1/completions", {"prompt": ["short one", long_text], "stream": True}),
        ("/v1/completions", {"prompt": [long_text, "short one"], "n": 2, "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long_text}], "stream": True}),
    ]
    for path, body in cases:
        st, hdrs, data = d.request("POST", path, body, {"Content-Type": "application/json"})
        e = check_error_body(st, data, 400)
        assert e["code"] == "context_length_exceeded" and hdrs["content-type"] == "application/json", (body, e)
    # n > 1 and two prompts, streamed: every choice of both prompts, then [DONE]
    s, head = stream_open(d.port, {"prompt": ["one", "two"], "n": 2, "max_tokens": 3, "stream": True,
                                   "temperature": 1.0, "seed": 5})
    assert head.startswith("HTTP/1.1 200"), head
    got = read_stream(s)
    seen = {}
    for ev in re.findall(rb"data: (\{[^\n]*\})\n\n", got):  # each event is one write, inside one chunk
        for c in json.loads(ev)["choices"]:
            if c.get("finish_reason"):
                seen[c["index"]] = c["finish_reason"]
    assert seen == {0: "length", 1: "length", 2: "length", 3: "length"}, (seen, got[-400:])


def test_unavailable(tmp):
    """While no worker is up (a worker that takes long to start), gemmad already answers: /health 503,
    a generation request 503 with code unavailable (the RPC's UNAVAILABLE), /metrics 200."""
    worker = os.path.join(os.path.dirname(os.path.abspath(GEMMAD)), "gemma-worker")
    script = os.path.join(tmp, "slow-worker.sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nsleep 30\nexec '{worker}' \"$@\"\n")
    os.chmod(script, 0o700)
    d = Daemon(GEMMAD, tmp, "starting", "--backend", "null", "--worker-bin", script, healthy=False)
    try:
        st, _, data = d.request("GET", "/health")
        assert st == 503 and json.loads(data)["status"] == "loading", (st, data)
        st, hdrs, data = d.request("POST", "/v1/completions", {"prompt": [5, 6], "max_tokens": 2})
        assert st == 503, (st, data)
        e = json.loads(data)["error"]
        assert e["code"] == "unavailable" and e["type"] == "server_error", e
        assert hdrs.get("retry-after") == "1", hdrs
        assert d.request("GET", "/metrics")[0] == 200
    except BaseException:
        print(d.logtext()[-4000:])
        raise
    finally:
        d.kill()


def test_null_backend(tmp):
    key = os.path.join(tmp, "key.txt")
    with open(key, "w") as f:
        f.write("  s3cret-key\n")
    d = Daemon(GEMMAD, tmp, "null", "--backend", "null", "--http-max-requests", "2", "--api-key-file", key,
               "--http-max-body", "64K", env={"GM_NULL_STEP_US": "20000"})
    auth = {"Authorization": "Bearer s3cret-key"}
    bauth = b"Authorization: Bearer s3cret-key\r\n"
    try:
        assert d.request("GET", "/health")[0] == 200
        assert d.request("GET", "/metrics")[0] == 200
        st, hdrs, data = d.request("GET", "/v1/models")
        e = check_error_body(st, data, 401)
        assert e["code"] == "invalid_api_key" and hdrs.get("www-authenticate") == "Bearer", (e, hdrs)
        st, hdrs, data = d.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        check_error_body(st, data, 401)
        st, hdrs, data = d.request("GET", "/v1/models", headers=auth)
        assert st == 200 and json.loads(data)["data"][0]["id"] == "null", data
        # no tokenizer: text prompts are refused, token ids work
        st, _, data = d.request("POST", "/v1/completions", {"prompt": "text", "max_tokens": 2}, auth)
        check_error_body(st, data, 400)
        st, _, data = d.request("POST", "/v1/completions", {"prompt": [5, 6], "max_tokens": 2}, auth)
        assert st == 200 and json.loads(data)["usage"]["completion_tokens"] == 2, data
        st, _, data = d.request("POST", "/v1/completions", {"prompt": [5] * 40000}, auth)
        check_error_body(st, data, 413)
        # two streams in flight fill --http-max-requests 2: the third is 429 like OVERLOADED
        a, _ = stream_open(d.port, {"prompt": [5, 6], "max_tokens": 40, "stream": True}, headers=bauth)
        b, _ = stream_open(d.port, {"prompt": [5, 6], "max_tokens": 40, "stream": True}, headers=bauth)
        st, hdrs, data = d.request("POST", "/v1/completions", {"prompt": [5], "max_tokens": 2}, auth)
        e = check_error_body(st, data, 429)
        assert e["code"] == "overloaded" and hdrs.get("retry-after") == "1", (e, hdrs)
        for s in (a, b):
            read_stream(s)
        st, _, data = d.request("POST", "/v1/completions", {"prompt": [5], "max_tokens": 2}, auth)
        assert st == 200, data
        # drain: SIGTERM while a stream runs; it finishes, new work is refused, /health says 503
        s, head = stream_open(d.port, {"prompt": [5, 6], "max_tokens": 100, "stream": True}, headers=bauth)
        assert head.startswith("HTTP/1.1 200"), head  # admitted: the headers follow admission
        d.p.terminate()
        deadline = time.time() + TIMEOUT
        while d.request("GET", "/health")[0] != 503:
            assert time.time() < deadline
            time.sleep(0.02)
        st, _, data = d.request("POST", "/v1/completions", {"prompt": [5], "max_tokens": 2}, auth)
        assert st == 503 and json.loads(data)["error"]["code"] == "shutting_down", (st, data)
        got = b""
        while b"data: [DONE]" not in got:
            chunk = s.recv(65536)
            assert chunk, got[-300:]
            got += chunk
        assert b'"finish_reason":"length"' in got
        s.close()
        assert d.p.wait(timeout=TIMEOUT) == 0
    except BaseException:
        print(d.logtext()[-4000:])
        raise
    finally:
        d.kill()


def main():
    with tempfile.TemporaryDirectory(prefix="gd-http-serve-") as tmp:
        with serving(GEMMAD, tmp, "tiny", "--model", TINY, "--backend", "cpu") as d:
            test_curl_sse(d)
            test_metrics(d)
            test_bad_input(d)
            test_slow_and_vanishing(d)
            test_admitted_later(d)
        test_unavailable(tmp)
        test_null_backend(tmp)
    print("ok")

if __name__ == "__main__":
    main()
