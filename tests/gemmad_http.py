"""gemmad_http.py - shared by the HTTP API tests: run gemmad with --http-listen, talk to it.

Daemon(...) starts gemmad on an ipc:// RPC endpoint in a temporary directory and an HTTP port the
kernel picks (127.0.0.1:0), reads the port from gemmad's log and waits for /health. Every wait is
bounded. need_module() pip-installs a missing package once, and exits 77 (skip) only when that is
impossible."""
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

TIMEOUT = 60.0


def need_module(mod, pkg):
    """Import mod, pip-installing pkg when missing; exit 77 when it cannot be had."""
    try:
        return __import__(mod)
    except ImportError:
        pass
    for extra in ([], ["--break-system-packages"]):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra, pkg],
                       capture_output=True, timeout=600)
        try:
            return __import__(mod)
        except ImportError:
            continue
    print(f"cannot import {mod} and pip could not install {pkg}: skipping")
    sys.exit(77)


class Daemon:
    def __init__(self, gemmad, tmp, name, *args, env=None, healthy=True):
        """healthy: wait until /health says 200 (else only until the HTTP port is known)."""
        self.name = name
        self.log = os.path.join(tmp, name + ".log")
        self.endpoint = f"ipc://{tmp}/{name}.sock"
        e = dict(os.environ)
        e.update(env or {})
        with open(self.log, "w") as f:
            self.p = subprocess.Popen([gemmad, "--listen", self.endpoint, "--http-listen", "127.0.0.1:0", *args],
                                      stdout=f, stderr=subprocess.STDOUT, env=e)
        self.port = None
        deadline = time.time() + TIMEOUT
        while self.port is None:
            assert self.p.poll() is None, f"gemmad {name} exited:\n{self.logtext()}"
            assert time.time() < deadline, f"gemmad {name} never said its HTTP port:\n{self.logtext()}"
            m = re.search(r"OpenAI-compatible HTTP API on \S+ \(port (\d+)\)", self.logtext())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        while healthy:
            assert self.p.poll() is None, f"gemmad {name} exited:\n{self.logtext()}"
            assert time.time() < deadline, f"gemmad {name} never became healthy:\n{self.logtext()}"
            try:
                if self.request("GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)

    def logtext(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def request(self, method, path, body=None, headers=None, timeout=TIMEOUT):
        """One request on a fresh connection: (status, headers dict (lower-case names), body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post_json(self, path, body, headers=None):
        status, hdrs, data = self.request("POST", path, body, headers)
        return status, json.loads(data) if data else None

    def metrics(self):
        """/metrics parsed by prometheus_client: {(sample name, frozenset(labels)): value}."""
        from prometheus_client.parser import text_string_to_metric_families
        status, hdrs, data = self.request("GET", "/metrics")
        assert status == 200, (status, data)
        assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
        out = {}
        for fam in text_string_to_metric_families(data.decode()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def wait_metric(self, name, want, labels=None, timeout=TIMEOUT):
        key = (name, frozenset((labels or {}).items()))
        deadline = time.time() + timeout
        while True:
            got = self.metrics().get(key)
            if got == want:
                return
            assert time.time() < deadline, f"{name}{labels or ''} stayed {got}, want {want}"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError(f"gemmad {self.name} did not stop:\n{self.logtext()}")
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def metric(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


@contextlib.contextmanager
def serving(gemmad, tmp, name, *args, env=None):
    """A Daemon for the with-block: its log's tail printed when the block fails, a clean exit
    (SIGTERM, status 0) required when it does not."""
    d = Daemon(gemmad, tmp, name, *args, env=env)
    try:
        yield d
    except BaseException:
        print(d.logtext()[-4000:])
        d.kill()
        raise
    rc = d.stop()
    assert rc == 0, f"gemmad {name} exit {rc}:\n{d.logtext()[-2000:]}"
