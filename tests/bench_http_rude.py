#!/usr/bin/env python3
"""bench_http_rude.py MODE - a server that answers gemma-bench --http badly, for test_bench_http.sh.

Prints "PORT <n>", then serves one connection at a time until killed. GET answers 200 "ok"
(the bench's health check). POST (a completion) gets, by MODE:
  reset  a 200 event stream with one token chunk, then the connection is reset (RST)
  json   a 200 application/json body instead of a stream
  junk   a 200 event stream whose event is not JSON, then data: [DONE]
"""
import socket
import struct
import sys

MODE = sys.argv[1]
CHUNK = b'data: {"choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n'


def read_request(c):
    """The request's method, after reading its head and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = c.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        more = c.recv(65536)
        if not more:
            return None
        body += more
    return head.split(b" ", 1)[0]


def chunked(payload):
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def answer(c, method):
    if method != b"POST":
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return
    if MODE == "json":
        body = b'{"choices":[{"index":0,"text":"all at once","finish_reason":"length"}]}'
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%s" % (len(body), body))
        return
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n")
    if MODE == "reset":
        c.sendall(chunked(CHUNK))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        return
    c.sendall(chunked(b"data: this is not json\n\n") + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("PORT", s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(10)
        try:
            method = read_request(c)
            if method:
                answer(c, method)
        except OSError:
            pass
        finally:
            c.close()


main()
