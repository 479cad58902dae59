#!/usr/bin/env python3
"""test_http.py HTTP_FAKE_CORE - http/http driven by curl, http.client and raw sockets.

http_fake_core runs the http module in a poll loop with a fake core (tests/http_fake_core.c).
Checked: SSE framing exactly `data: ...\\n\\n` with the event-stream headers and chunked
encoding (curl); echo and keep-alive (http.client); 64 concurrent streams; bodies over the
limit get 413 (declared length and chunked) and the server keeps serving; malformed HTTP gets
400; bearer-token auth answers 401 with an OpenAI-shaped error on /v1/ paths only; a client
that disconnects mid-stream or while its request waits is reported to the core (on_abort); a
reader taking one byte per 100 ms does not hold up other clients; destroying the server with
streams still held exits cleanly. Every wait is bounded by a socket timeout or a deadline."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

BIN = sys.argv[1]
TIMEOUT = 20.0


class Core:
    def __init__(self, *args):
        self.p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        assert line.startswith("PORT "), f"fake core did not start: {line!r} {self.p.stderr.read()}"
        self.port = int(line.split()[1])

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def get(self, path, headers=None):
        c = self.conn()
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, dict(r.getheaders()), body

    def post(self, path, body, headers=None):
        c = self.conn()
        c.request("POST", path, body=body, headers=headers or {})
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, dict(r.getheaders()), out

    def stats(self):
        return json.loads(self.get("/stats")[2])

    def wait_aborts(self, n):
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            s = self.stats()
            if s["aborts"] >= n:
                return s
            time.sleep(0.05)
        raise AssertionError(f"aborts stayed at {self.stats()['aborts']}, want {n}")

    def quit(self):
        status, _, body = self.post("/quit", b"")
        assert status == 200 and body == b"bye"
        out, err = self.p.communicate(timeout=TIMEOUT)
        assert self.p.returncode == 0, f"fake core exit {self.p.returncode}: {err}"
        assert "BYE" in out

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def read_response(s):
    """One HTTP response from socket s: (status line, whole bytes); b"" if closed before any."""
    out = b""
    try:
        while b"\r\n\r\n" not in out:
            b = s.recv(65536)
            if not b:
                return out.split(b"\r\n", 1)[0], out
            out += b
        head, _, body = out.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while length is None or len(body) < length:
            b = s.recv(65536)
            if not b:
                break
            body += b
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    return out.split(b"\r\n", 1)[0], out


def raw(port, data):
    """Send raw bytes, return (status line, response bytes) of the one response."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    line, out = read_response(s)
    s.close()
    return line, out


def sse(n):
    return "".join(f'data: {{"i":{i}}}\n\n' for i in range(n)) + "data: [DONE]\n\n"


def test_sse_curl(core):
    if not shutil.which("curl"):
        print("curl not found: SSE framing checked with http.client only")
        return
    url = f"http://127.0.0.1:{core.port}/stream?n=5&ms=5"
    out = subprocess.run(["curl", "-sN", "--max-time", "20", "-D", "-", url], capture_output=True, timeout=30)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert out.returncode == 0, out
    assert body.decode() == sse(5), body
    h = head.decode().lower()
    assert h.startswith("http/1.1 200"), h
    assert "content-type: text/event-stream" in h, h
    assert "cache-control: no-cache" in h, h
    assert "transfer-encoding: chunked" in h, h
    # curl with a body, and its exit code on 404
    out = subprocess.run(["curl", "-s", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                          '{"x": "\u00e9"}', f"http://127.0.0.1:{core.port}/echo"], capture_output=True, timeout=30)
    assert out.stdout.decode() == '{"x": "\u00e9"}', out


def test_echo_keepalive(core):
    c = core.conn()
    for i in range(5):
        body = json.dumps({"i": i, "pad": "x" * (1000 * i)}).encode()
        c.request("POST", "/echo", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and r.read() == body and r.getheader("Content-Type") == "application/json"
    c.request("GET", "/health")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok"
    c.close()
    status, h, body = core.get("/misuse")
    assert status == 200 and body == b"refused" and h.get("X-Test") == "1", (status, body, h)
    assert core.stats()["misuse_ok"] is True
    status, _, body = core.post("/v1/completions", b'{"prompt": "x", "temperature": 3}')
    err = json.loads(body)["error"]
    assert status == 400 and err["param"] == "temperature" and err["code"] == "decimal_above_max_value", err
    status, _, body = core.post("/v1/completions", b'{"prompt": "x"}')
    assert status == 200 and body == b"{}"
    status, _, body = core.get("/nope")
    err = json.loads(body)["error"]
    assert status == 404 and err["code"] == "not_found" and set(err) == {"message", "type", "param", "code"}, err


def test_concurrent_streams(core):
    results = [None] * 64

    def one(i):
        c = core.conn()
        c.request("GET", f"/stream?n={10 + i % 7}&ms=2")
        r = c.getresponse()
        results[i] = (r.status, r.read().decode(), 10 + i % 7)
        c.close()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    for st, body, n in results:
        assert st == 200 and body == sse(n), (st, body[:80])


def test_body_limits(core):
    status, h, body = core.post("/echo", b"x" * 65536)
    assert status == 200 and len(body) == 65536
    status, h, body = core.post("/echo", b"x" * 65537)
    assert status == 413, status
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # chunked: no declared length, the limit is found while reading; the rest is dropped
    s = socket.create_connection(("127.0.0.1", core.port), timeout=TIMEOUT)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(40):
        s.sendall(b"1000\r\n" + b"y" * 4096 + b"\r\n")
    s.sendall(b"0\r\n\r\n")
    line, out = read_response(s)
    assert line.startswith(b"HTTP/1.1 413"), out[:200]
    assert b"request_too_large" in out
    # ... and the connection still serves the next request
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    line, out = read_response(s)
    assert line.startswith(b"HTTP/1.1 200") and out.endswith(b"ok"), out
    s.close()
    # a huge declared length is refused before any body is read
    line, out = raw(core.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    assert line.startswith(b"HTTP/1.1 413"), out[:200]
    assert core.get("/health")[0] == 200


def test_malformed(core):
    """libmicrohttpd answers what it can parse as a request with a 4xx/5xx (HTML body); a first
    line that is not a request line at all gets the connection closed."""
    for req, want in [(b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHeader\r\n\r\n", b" 400 "),
                      (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b" 400 "),
                      (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", b" 505 "),
                      (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n", b" 431 "),
                      (b"GARBAGE\r\n\r\n", b""),
                      (b"GET\r\n\r\n", b"")]:
        line, out = raw(core.port, req)
        if want:
            assert line.startswith(b"HTTP/1.1") and want in line, (req[:40], out[:120])
        else:
            assert out == b"", (req[:40], out[:120])
    assert core.get("/health")[0] == 200


def test_auth():
    core = Core("--api-key", "sekret")
    try:
        status, h, body = core.post("/v1/echo", b"{}")
        err = json.loads(body)["error"]
        assert status == 401 and err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", body
        assert h.get("WWW-Authenticate") == "Bearer"
        status, _, _ = core.post("/v1/echo", b"{}", {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, _ = core.post("/v1/echo", b"{}", {"Authorization": "Bearer sekre"})
        assert status == 401
        status, _, _ = core.post("/v1/echo", b"{}", {"Authorization": "Basic sekret"})
        assert status == 401
        status, _, body = core.post("/v1/echo", b"{}", {"Authorization": "Bearer sekret"})
        assert status == 200 and body == b"{}"
        status, _, body = core.post("/v1/echo", b"{}", {"Authorization": "bearer sekret"})
        assert status == 200
        # paths outside /v1/ are open (health checks, metrics)
        assert core.get("/health")[0] == 200
        # a large body refused by auth is not read
        line, out = raw(core.port, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        assert line.startswith(b"HTTP/1.1 401"), out[:100]
        core.quit()
    finally:
        core.kill()


def test_disconnects(core):
    base = core.stats()["aborts"]
    # mid-stream: read two events, then hang up
    s = socket.create_connection(("127.0.0.1", core.port), timeout=TIMEOUT)
    s.sendall(b"GET /stream?n=100000&ms=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while got.count(b"data: ") < 2:
        b = s.recv(4096)
        assert b, "stream closed early"
        got += b
    s.close()
    core.wait_aborts(base + 1)
    # while the request waits for its answer (suspended, no bytes flowing)
    s = socket.create_connection(("127.0.0.1", core.port), timeout=TIMEOUT)
    s.sendall(b"GET /later?ms=600000 HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.time() + TIMEOUT
    while core.stats()["held"] < 2 and time.time() < deadline:  # /stats itself is held while it runs
        time.sleep(0.02)
    s.close()
    st = core.wait_aborts(base + 2)
    assert st["held"] == 1, st  # only /stats
    # a stream that finished normally is not an abort
    assert core.get("/stream?n=2&ms=1")[0] == 200
    assert core.stats()["aborts"] == base + 2


def test_slow_reader(core):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", core.port))
    s.sendall(b"GET /big?kb=8192 HTTP/1.1\r\nHost: x\r\n\r\n")
    stop = threading.Event()
    got = [0]

    def trickle():
        while not stop.is_set():
            b = s.recv(1)
            if not b:
                break
            got[0] += 1
            time.sleep(0.1)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(0.3)
        # other clients are served while the slow one holds 8 MiB of backlog
        for i in range(20):
            assert core.get("/health")[0] == 200
        status, _, body = core.get("/stream?n=20&ms=1")
        assert status == 200 and body.decode() == sse(20)
        status, _, body = core.post("/echo", b"z" * 30000)
        assert status == 200 and len(body) == 30000
        assert got[0] >= 1
    finally:
        stop.set()
        t.join(TIMEOUT)
        s.close()
    assert core.get("/health")[0] == 200


def test_quit_with_streams_held(core):
    s = socket.create_connection(("127.0.0.1", core.port), timeout=TIMEOUT)
    s.sendall(b"GET /stream?n=100000&ms=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"data: " not in got:
        b = s.recv(4096)
        assert b, "stream closed early"
        got += b
    s2 = socket.create_connection(("127.0.0.1", core.port), timeout=TIMEOUT)
    s2.sendall(b"GET /later?ms=600000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    core.quit()
    # the held connections are closed
    s.settimeout(TIMEOUT)
    while True:
        b = s.recv(65536)
        if not b:
            break
    s.close()
    s2.close()


def test_bad_listen():
    for addr in ["nonsense", "127.0.0.1:99999", "300.1.1.1:80", ":"]:
        p = subprocess.run([BIN, "--listen", addr], capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 2 and "http" in p.stderr, (addr, p.returncode, p.stderr)
    core = Core()
    try:
        p = subprocess.run([BIN, "--listen", f"127.0.0.1:{core.port}"], capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert p.returncode == 2 and "cannot listen" in p.stderr, p.stderr
    finally:
        core.kill()
    try:  # IPv6 where the host has it
        with socket.socket(socket.AF_INET6) as t:
            t.bind(("::1", 0))
    except OSError:
        print("no IPv6 loopback: [::1] not checked")
        return
    core = Core("--listen", "[::1]:0")
    try:
        c = http.client.HTTPConnection("::1", core.port, timeout=TIMEOUT)
        c.request("GET", "/health")
        assert c.getresponse().status == 200
        c.close()
    finally:
        core.kill()


def main():
    core = Core()
    try:
        for t in [test_sse_curl, test_echo_keepalive, test_concurrent_streams, test_body_limits, test_malformed,
                  test_disconnects, test_slow_reader]:
            t0 = time.time()
            t(core)
            print(f"ok {t.__name__} ({time.time() - t0:.2f} s)", flush=True)
        test_quit_with_streams_held(core)
        print("ok test_quit_with_streams_held", flush=True)
    finally:
        core.kill()
    test_auth()
    print("ok test_auth", flush=True)
    test_bad_listen()
    print("ok test_bad_listen", flush=True)


if __name__ == "__main__":
    main()
