#!/usr/bin/env python3
"""test_router_fuzz.py - every reply of gemmad and of gemma-router parses with a strict protobuf parser.

proto3 `string` fields must be valid UTF-8; Python's protobuf (like Go's and Java's) rejects a whole
ServerMessage when one of them is not, and one message can carry chunks of several requests. This test
sends mutated ClientMessages (the known case: a chat role of 31 x "a" + "e-acute" echoed with "%.32s";
invalid and huge UTF-8 in role, text and stop strings; random bytes; truncations; bit flips) to a
gemmad (null backend, tiny model's tokenizer) and through a gemma-router in front of it, and parses
every reply with protobuf's own classes, built at run time from the descriptor set that protoc-c
writes from proto/gemma.proto (so no generated Python code has to match the installed runtime).

Exit 0 = every reply parsed, 1 = a reply did not (its bytes are printed), 77 = pyzmq or protobuf missing.
Run time is bounded (a few seconds; every wait has a deadline).
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import zmq
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.message import DecodeError
except ImportError as e:  # pragma: no cover - depends on the host
    print(f"SKIP: {e} (pip install pyzmq protobuf)")
    sys.exit(77)

DEADLINE_S = 25.0  # the whole test; CTest's own timeout is above it
T0 = time.monotonic()


def left_ms(cap_ms):
    return max(1, min(cap_ms, int((DEADLINE_S - (time.monotonic() - T0)) * 1000)))


def load_classes(desc_path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(desc_path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.AddSerializedFile(fd.SerializeToString())
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.21
        factory = message_factory.MessageFactory(pool)
        get = factory.GetPrototype
    return (get(pool.FindMessageTypeByName("gemma.v1.ClientMessage")),
            get(pool.FindMessageTypeByName("gemma.v1.ServerMessage")))


class Peer:
    """A DEALER to one endpoint; every frame it receives is parsed strictly."""

    def __init__(self, ctx, ep, server_cls, label):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(ep)
        self.cls = server_cls
        self.label = label
        self.replies = 0
        self.bad = []

    def parse(self, frame):
        self.replies += 1
        try:
            return self.cls.FromString(frame)
        except DecodeError as e:
            self.bad.append((frame, str(e)))
            return None

    def drain(self, quiet_ms, cap_ms):
        """Receive until nothing came for quiet_ms (or cap_ms passed); return the parsed messages."""
        out = []
        end = time.monotonic() + cap_ms / 1000
        while time.monotonic() < end:
            if not self.s.poll(min(quiet_ms, left_ms(quiet_ms))):
                break
            m = self.parse(self.s.recv())
            if m is not None:
                out.append(m)
        return out

    def call(self, payload, timeout_ms=5000):
        """Send one frame and wait for the first reply frame (parsed, or None when it did not parse)."""
        self.s.send(payload)
        if not self.s.poll(left_ms(timeout_ms)):
            return "timeout"
        return self.parse(self.s.recv())


def placeholder(rng, n):
    """n ASCII bytes unlikely to appear anywhere else in a serialized message."""
    return "".join(rng.choice("QXZJKV") for _ in range(n))


def with_raw_strings(msg, fills):
    """msg serialized, then each placeholder (str, same byte length) replaced by its raw bytes.
    Python protobuf refuses to set invalid UTF-8, so invalid strings are spliced into the wire form."""
    data = msg.SerializeToString()
    for ph, raw in fills:
        data = data.replace(ph.encode(), raw, 1)
    return data


BAD_UTF8 = [
    b"\xc3",                 # a lead byte alone
    b"\xe2\x82",             # a 3-byte character cut short
    b"\x80\x80",             # continuation bytes alone
    b"\xc0\xaf",             # overlong
    b"\xed\xa0\x80",         # a surrogate
    b"\xf4\x90\x80\x80",     # above U+10FFFF
    b"\xff\xfe",
]


def rand_text(rng, n):
    """Random mostly-valid text with some invalid bytes and multi-byte characters."""
    parts, size = [], 0
    while size < n:
        k = rng.random()
        if k < 0.5:
            piece = bytes([rng.randrange(0x20, 0x7f)])
        elif k < 0.8:
            piece = rng.choice(["é", "€", "😀", "中"]).encode()
        else:
            piece = rng.choice(BAD_UTF8)
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)


def generate_msg(client_cls, rid, rng, kind):
    """One GenerateRequest of the given kind; returns the wire bytes."""
    m = client_cls()
    m.protocol_version = 1
    m.request_id = rid
    g = m.generate
    g.max_tokens = rng.choice([1, 2, 4])
    g.stream = rng.random() < 0.5
    fills = []

    def raw(b):
        ph = placeholder(rng, len(b))
        fills.append((ph, b))
        return ph

    if kind == "role_cut":  # the reproducer: the role is echoed with "%.32s", cutting the e-acute
        msg = g.chat.messages.add()
        msg.role = "a" * 31 + "é"
        msg.text = "hi"
    elif kind == "role":
        msg = g.chat.messages.add()
        msg.role = raw(rand_text(rng, rng.choice([1, 31, 32, 33, 300, 5000])))
        msg.text = "hi"
    elif kind == "chat_text":
        msg = g.chat.messages.add()
        msg.role = rng.choice(["user", "model", "system", "x" * 40])
        msg.text = raw(rand_text(rng, rng.choice([3, 64, 3000])))
    elif kind == "text":
        g.text = raw(rand_text(rng, rng.choice([1, 100, 20000])))
    elif kind == "nul":  # a NUL byte inside a string: gemmad names its position (INVALID_ARGUMENT)
        where = rng.choice(["text", "chat", "role", "stop"])
        bad = raw(b"ab\x00" + rand_text(rng, rng.choice([1, 40])))
        if where == "text":
            g.text = bad
        elif where == "stop":
            g.text = "hello"
            g.stop.append(bad)
        else:
            msg = g.chat.messages.add()
            msg.role, msg.text = (bad, "hi") if where == "role" else ("user", bad)
    elif kind == "stop":
        g.text = "hello"
        for _ in range(rng.choice([1, 3, 17])):
            g.stop.append(raw(rand_text(rng, rng.choice([1, 5, 255, 257, 600]))))
    else:  # tokens: valid, or out of the vocabulary
        g.tokens.ids.extend([2] + [rng.randrange(-5, 300000) for _ in range(rng.randrange(1, 8))])
    return with_raw_strings(m, fills)


def mutate(rng, data):
    """Random bytes, a truncation or flipped bytes of a valid message."""
    k = rng.random()
    if k < 0.2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    b = bytearray(data)
    if k < 0.5 and len(b) > 1:
        return bytes(b[: rng.randrange(1, len(b))])
    for _ in range(rng.randrange(1, 4)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


KINDS = ["role_cut", "role", "chat_text", "text", "stop", "tokens", "nul"]


def fuzz(peer, client_cls, rng, n):
    """n messages in batches (so that replies of several requests share messages), all replies parsed."""
    rid = 1000
    sent = 0
    while sent < n and time.monotonic() - T0 < DEADLINE_S - 4:
        for _ in range(min(32, n - sent)):
            rid += 1
            msg = generate_msg(client_cls, rid, rng, rng.choice(KINDS))
            peer.s.send(msg if rng.random() < 0.6 else mutate(rng, msg))
            sent += 1
        peer.drain(quiet_ms=150, cap_ms=3000)
    peer.drain(quiet_ms=300, cap_ms=3000)
    return sent


def wait_health(peer, client_cls, what):
    h = client_cls()
    h.protocol_version = 1
    h.request_id = 1
    h.health.SetInParent()
    while time.monotonic() - T0 < 15:
        r = peer.call(h.SerializeToString(), timeout_ms=500)
        if r is not None and r != "timeout" and r.HasField("health") and r.health.serving:
            return
        time.sleep(0.05)
    sys.exit(f"FAIL: {what} never said serving")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gemmad", required=True)
    ap.add_argument("--router", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--desc", required=True, help="FileDescriptorSet of proto/gemma.proto")
    ap.add_argument("--count", type=int, default=int(os.environ.get("GM_FUZZ_COUNT", "400")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("GM_FUZZ_SEED", "14")))
    a = ap.parse_args()
    client_cls, server_cls = load_classes(a.desc)
    tmp = tempfile.mkdtemp(prefix="gm_fuzz_")
    gd_ep, rt_ep = f"ipc://{tmp}/gemmad", f"ipc://{tmp}/router"
    procs = []
    logs = {}
    ctx = zmq.Context()
    failed = False
    try:
        for name, argv in (
            ("gemmad", [a.gemmad, "--backend", "null", "--model", a.model, "--listen", gd_ep,
                        "--kv-blocks", "512", "--max-context", "128", "--log-level", "error"]),
            ("router", [a.router, "--listen", rt_ep, "--replica", gd_ep, "--heartbeat-ms", "50",
                        "--log-level", "error"]),
        ):
            logs[name] = open(os.path.join(tmp, name + ".log"), "w+")
            procs.append(subprocess.Popen(argv, stdout=logs[name], stderr=subprocess.STDOUT))
        for ep, label in ((gd_ep, "gemmad"), (rt_ep, "gemma-router")):
            rng = random.Random(a.seed)
            peer = Peer(ctx, ep, server_cls, label)
            wait_health(peer, client_cls, label)
            # the reproducer first, alone: its reply must parse and say why the role is wrong
            r = peer.call(generate_msg(client_cls, 7, rng, "role_cut"))
            if r == "timeout":
                print(f"FAIL: {label}: no reply to the cut-role request")
                failed = True
            # a NUL inside the prompt text is refused with its position, not cut off silently
            r = peer.call(with_raw_strings(client_cls(protocol_version=1, request_id=8,
                                                      generate={"text": "QXZJK", "max_tokens": 1}),
                                           [("QXZJK", b"ab\x00cd")]))
            ok = r not in (None, "timeout") and (
                any(c.request_id == 8 and c.error_code == 1 and "NUL byte at position 2" in c.error_message
                    for c in r.chunks) or  # gemmad: the request's final chunk
                (r.HasField("error") and r.error.code == 1 and "NUL byte at position 2" in r.error.message))  # router
            if not ok:
                print(f"FAIL: {label}: a prompt with a NUL byte got {r}")
                failed = True
            if label == "gemma-router":  # a frame over gemmad's limit: refused by the router, never forwarded
                m = client_cls(protocol_version=1, request_id=9, generate={"text": "x" * 100000, "max_tokens": 1})
                r = peer.call(m.SerializeToString())
                if r in (None, "timeout") or not any(c.request_id == 9 and c.error_code == 2 for c in r.chunks):
                    print(f"FAIL: {label}: a request over the replica's frame limit got {r}")
                    failed = True
            sent = fuzz(peer, client_cls, rng, a.count)
            print(f"{label}: {sent} mutated messages, {peer.replies} replies, {len(peer.bad)} not parseable")
            for frame, err in peer.bad[:3]:
                print(f"  {err}: {frame[:200].hex()}")
            failed |= bool(peer.bad)
            # the peer still answers afterwards
            wait_health(peer, client_cls, label + " after the fuzz run")
            peer.s.close()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        ctx.destroy(linger=0)
        for name, f in logs.items():
            f.seek(0)
            text = f.read()
            if failed and text:
                print(f"--- {name} log (tail) ---\n{text[-2000:]}")
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("FAIL" if failed else "PASS", f"({time.monotonic() - T0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
