#!/usr/bin/env python3
"""faults_probe.py - the figures of issue 14's fault cases, for one gemmad build.

Each case starts its own gemmad (null backend, or the tiny CPU model), provokes one fault and prints
what a client sees: Health latency while it lasts, how requests end, gemmad's RSS (VmRSS, VmHWM from
/proc). It asserts nothing (tests/test_daemon_faults.c does); run it against a build before and after
a change to compare:

    python3 bench/faults_probe.py --build build --model build/models/tiny [--case NAME ...]

Cases: bigprompt, sigstop, restart, slow, queued, nul. Each has a wall-clock cap (about 60 s).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_router_fuzz import load_classes  # noqa: E402  (the descriptor-set loader, one copy)


CM = SM = None


def rss_kb(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def worker_pid(gemmad):
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != gemmad:
                continue
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"gemma-worker" in f.read():
                    return int(p)
        except (OSError, ValueError, IndexError):
            pass
    return -1


class Gemmad:
    def __init__(self, build, tmp, name, args):
        self.ep = f"ipc://{tmp}/{name}.sock"
        self.log = open(f"{tmp}/{name}.log", "w")
        env = dict(os.environ, TMPDIR=tmp)
        self.p = subprocess.Popen([f"{build}/daemon/gemmad", "--listen", self.ep] + args, stdout=self.log,
                                  stderr=subprocess.STDOUT, env=env)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
        self.log.close()


class Peer:
    def __init__(self, ctx, ep, rcvhwm=None):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.s.setsockopt(zmq.RCVHWM, rcvhwm)
            self.s.setsockopt(zmq.RCVBUF, 4096)
        self.s.connect(ep)
        self.rid = 0

    def send(self, **kw):
        self.rid += 1
        m = CM(protocol_version=1, request_id=self.rid, **kw)
        self.s.send(m.SerializeToString())
        return self.rid

    def recv(self, timeout_ms):
        if not self.s.poll(timeout_ms):
            return None
        return SM.FromString(self.s.recv())

    def health(self, timeout_ms=20000):
        t = time.monotonic()
        rid = self.send(health={})
        end = t + timeout_ms / 1000
        while time.monotonic() < end:
            m = self.recv(int((end - time.monotonic()) * 1000) + 1)
            if m is not None and m.WhichOneof("body") == "health" and m.health.request_id == rid:
                return (time.monotonic() - t) * 1000, m.health.serving
        return None, None

    def stats(self):
        rid = self.send(stats={})
        for _ in range(100):
            m = self.recv(10000)
            if m is None:
                return None
            if m.WhichOneof("body") == "stats" and m.stats.request_id == rid:
                return m.stats
        return None


def wait_serving(ctx, g, cap_s=60):
    p = Peer(ctx, g.ep)
    end = time.monotonic() + cap_s
    while time.monotonic() < end:
        ms, serving = p.health(1000)
        if serving:
            p.s.close()
            return True
        time.sleep(0.05)
    p.s.close()
    return False


class HealthPoller(threading.Thread):
    """Health every 20 ms from its own socket; records (time, latency ms or None, serving)."""

    def __init__(self, ctx, ep):
        super().__init__(daemon=True)
        self.peer = Peer(ctx, ep)
        self.samples = []
        self.stop = False

    def run(self):
        while not self.stop:
            t = time.monotonic()
            ms, serving = self.peer.health(30000)
            self.samples.append((t, ms, serving))
            time.sleep(0.02)
        self.peer.s.close()

    def summary(self, t0=None):
        s = [x for x in self.samples if t0 is None or x[0] >= t0]
        lat = [x[1] for x in s if x[1] is not None]
        miss = sum(1 for x in s if x[1] is None)
        ns = sum(1 for x in s if x[2] is False)
        return (f"{len(s)} probes, max {max(lat) if lat else float('nan'):.1f} ms, "
                f"median {sorted(lat)[len(lat) // 2] if lat else float('nan'):.1f} ms, {miss} unanswered, "
                f"{ns} said not serving")


def finish_of(m):
    out = []
    for ch in m.chunks:
        if ch.finish_reason:
            out.append((ch.request_id, ch.finish_reason, ch.error_code, ch.error_message))
    if m.WhichOneof("body") == "error":
        out.append((m.error.request_id, -1, m.error.code, m.error.message))
    return out


def case_bigprompt(a, ctx, tmp, flags=(), sizes=(10, 1, 0.05)):
    g = Gemmad(a.build, tmp, "big", ["--model", a.model, "--backend", "cpu"] + list(flags))
    try:
        assert wait_serving(ctx, g)
        hp = HealthPoller(ctx, g.ep)
        hp.start()
        time.sleep(0.5)
        for mb in sizes:
            c = Peer(ctx, g.ep)
            hwm0 = rss_kb(g.p.pid, "VmHWM")
            t0 = time.monotonic()
            c.send(generate={"text": "hello world " * int(mb * 1e6 / 12), "max_tokens": 1})
            m = c.recv(40000)
            dt = (time.monotonic() - t0) * 1000
            res = finish_of(m) if m is not None else "no reply (connection dropped or timeout)"
            print(f"  {mb} MB prompt: {dt:.0f} ms -> {res}")
            print(f"    health during it: {hp.summary(t0)}")
            print(f"    gemmad VmHWM {hwm0} -> {rss_kb(g.p.pid, 'VmHWM')} kB, VmRSS now {rss_kb(g.p.pid)} kB")
            c.s.close()
        hp.stop = True
        hp.join()
    finally:
        g.stop()


def case_bigthread(a, ctx, tmp):
    """The largest prompt the limits let through, raised to 4 MB: tokenized while Health is probed."""
    case_bigprompt(a, ctx, tmp, ["--max-prompt-bytes", "4M", "--max-message-bytes", "5M"], (4,))


def start_long(c, n, tokens=8000):
    ids = []
    for _ in range(n):
        ids.append(c.send(generate={"tokens": {"ids": [2, 651, 3037]}, "max_tokens": tokens, "ignore_eos": True,
                                    "stream": True}))
    seen = set()
    end = time.monotonic() + 20
    while len(seen) < n and time.monotonic() < end:
        m = c.recv(1000)
        if m:
            for ch in m.chunks:
                seen.add(ch.request_id)
    return ids


def case_sigstop(a, ctx, tmp):
    g = Gemmad(a.build, tmp, "stop", ["--backend", "null", "--kv-memory", "1G"] + a.extra)
    try:
        assert wait_serving(ctx, g)
        c = Peer(ctx, g.ep)
        ids = start_long(c, 4)
        w = worker_pid(g.p.pid)
        hp = HealthPoller(ctx, g.ep)
        hp.start()
        t0 = time.monotonic()
        os.kill(w, signal.SIGSTOP)
        ends = {}
        while len(ends) < 4 and time.monotonic() - t0 < 40:
            m = c.recv(500)
            if m:
                for rid, fr, code, msg in finish_of(m):
                    ends.setdefault(rid, ((time.monotonic() - t0) * 1000, code))
        print(f"  SIGSTOP: requests ended: {sorted(ends.values()) or 'none within 40 s'}")
        print(f"    health meanwhile: {hp.summary(t0)}")
        if len(ends) < 4:
            os.kill(w, signal.SIGCONT)
        # one new request after the outage
        t1 = time.monotonic()
        rid = c.send(generate={"tokens": {"ids": [2, 651]}, "max_tokens": 4})
        got = None
        while got is None and time.monotonic() - t1 < 30:
            m = c.recv(500)
            for r, fr, code, msg in finish_of(m) if m else []:
                if r == rid:
                    got = (fr, code)
        print(f"    a new request afterwards: {got} in {(time.monotonic() - t1) * 1000:.0f} ms")
        hp.stop = True
        hp.join()
    finally:
        g.stop()


def case_restart(a, ctx, tmp):
    g = Gemmad(a.build, tmp, "rst", ["--backend", "null", "--ready-timeout-ms", "5000"])
    try:
        assert wait_serving(ctx, g)
        ctl = [os.path.join(tmp, d, "control") for d in os.listdir(tmp) if d.startswith("gemmad-")]
        for p in ctl:
            if os.path.exists(p):
                os.unlink(p)
        hp = HealthPoller(ctx, g.ep)
        hp.start()
        c = Peer(ctx, g.ep)
        t0 = time.monotonic()
        os.kill(worker_pid(g.p.pid), signal.SIGKILL)
        time.sleep(0.3)
        rid = c.send(generate={"tokens": {"ids": [2, 651]}, "max_tokens": 4})
        got = None
        while got is None and time.monotonic() - t0 < 20:
            m = c.recv(500)
            for r, fr, code, msg in finish_of(m) if m else []:
                if r == rid:
                    got = (fr, code, msg, (time.monotonic() - t0) * 1000)
        print(f"  control socket deleted + worker killed: request -> {got or 'no answer in 20 s'}")
        time.sleep(max(0, 15 - (time.monotonic() - t0)))
        print(f"    health over 15 s: {hp.summary(t0)}")
        ms, serving = Peer(ctx, g.ep).health(5000)
        print(f"    after 15 s: health {ms} ms, serving {serving}")
        hp.stop = True
        hp.join()
    finally:
        g.stop()


def case_slow(a, ctx, tmp):
    g = Gemmad(a.build, tmp, "slow", ["--backend", "null", "--kv-memory", "4G", "--max-seqs", "1024"] + a.extra)
    try:
        assert wait_serving(ctx, g)
        r0 = rss_kb(g.p.pid)
        peers = [Peer(ctx, g.ep, rcvhwm=1) for _ in range(500)]
        for p in peers:
            p.send(generate={"tokens": {"ids": [2, 651]}, "max_tokens": a.slow_tokens, "ignore_eos": True,
                             "stream": True})
        t0 = time.monotonic()
        peak = r0
        while time.monotonic() - t0 < 20:
            peak = max(peak, rss_kb(g.p.pid))
            time.sleep(0.2)
        st = Peer(ctx, g.ep).stats()
        print(f"  500 clients that never read: gemmad RSS {r0} -> peak {peak} kB over 20 s, now {rss_kb(g.p.pid)} kB;"
              f" running {st.running}, cancelled {st.requests_cancelled}, finished {st.requests_finished}")
        for p in peers:
            p.s.close()
        time.sleep(12)
        print(f"    12 s after they left: RSS {rss_kb(g.p.pid)} kB")
    finally:
        g.stop()


def case_queued(a, ctx, tmp):
    g = Gemmad(a.build, tmp, "queue", ["--backend", "null", "--kv-memory", "1G", "--max-seqs", "1"] + a.extra)
    try:
        assert wait_serving(ctx, g)
        r0 = rss_kb(g.p.pid)
        c = Peer(ctx, g.ep)
        c.s.setsockopt(zmq.SNDHWM, 0)
        c.send(generate={"tokens": {"ids": [2, 651]}, "max_tokens": 8000, "ignore_eos": True})
        for _ in range(100000):
            c.send(generate={"tokens": {"ids": [2, 651, 3037, 100]}, "max_tokens": a.queued_tokens})
        t0 = time.monotonic()
        codes = {}
        n = 0
        while time.monotonic() - t0 < 3:
            m = c.recv(200)
            if m:
                for rid, fr, code, msg in finish_of(m):
                    codes[code] = codes.get(code, 0) + 1
        st = Peer(ctx, g.ep).stats()
        print(f"  100k queued requests (max_tokens {a.queued_tokens}): RSS {r0} -> {rss_kb(g.p.pid)} kB (peak {rss_kb(g.p.pid, 'VmHWM')}); "
              f"waiting {st.waiting}; answers so far by code {codes}")
        c.s.close()
        time.sleep(3)
        print(f"    3 s after the client left: RSS {rss_kb(g.p.pid)} kB")
    finally:
        g.stop()


def case_nul(a, ctx, tmp):
    g = Gemmad(a.build, tmp, "nul", ["--model", a.model, "--backend", "cpu"])
    try:
        assert wait_serving(ctx, g)
        c = Peer(ctx, g.ep)
        c.send(generate={"text": "hello\x00 world", "max_tokens": 2})
        m = c.recv(10000)
        print(f"  text with a NUL at byte 5: {finish_of(m) if m else 'no reply'}; "
              f"prompt tokens {[ch.usage.prompt_tokens for ch in m.chunks] if m else '-'}")
        c.send(generate={"chat": {"messages": [{"role": "user", "text": "hi\x00there"}]}, "max_tokens": 2})
        m = c.recv(10000)
        print(f"  chat text with a NUL at byte 2: {finish_of(m) if m else 'no reply'}")
    finally:
        g.stop()


CASES = {"bigprompt": case_bigprompt, "bigthread": case_bigthread, "sigstop": case_sigstop, "restart": case_restart, "slow": case_slow,
         "queued": case_queued, "nul": case_nul}


def main():
    global CM, SM
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", default="build/models/tiny")
    ap.add_argument("--case", action="append")
    ap.add_argument("--extra", action="append", default=[], help="extra gemmad flag for the null cases")
    ap.add_argument("--slow-tokens", type=int, default=8000, help="max_tokens of each slow client's request")
    ap.add_argument("--queued-tokens", type=int, default=1, help="max_tokens of each queued request (0 = context)")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.model = os.path.abspath(a.model)
    CM, SM = load_classes(f"{a.build}/proto/gemma.desc")
    ctx = zmq.Context()
    for name in a.case or list(CASES):
        tmp = tempfile.mkdtemp(prefix="gdp-", dir="/tmp")
        print(f"[{name}]", flush=True)
        try:
            CASES[name](a, ctx, tmp)
        except Exception as e:  # a probe, not a test: report and go on
            print(f"  probe failed: {e!r}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
    ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
