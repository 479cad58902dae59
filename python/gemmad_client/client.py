"""A small client for gemmad's RPC: protobuf gemma.v1 messages over a ZeroMQ DEALER socket.

One Client is one connection; many requests may be in flight on it (gemmad answers each
message with the chunks of any of them), so events are sorted into per-request queues.
Not thread-safe: use one Client per thread."""
import collections
import dataclasses
import itertools
import time
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import zmq

from . import gemma_pb2 as pb

PROTOCOL_VERSION = 1

_FINISH = {
    pb.FINISH_NONE: None,
    pb.FINISH_LENGTH: "length",
    pb.FINISH_STOP: "stop",
    pb.FINISH_CANCELLED: "cancelled",
    pb.FINISH_ERROR: "error",
}


class GemmadError(Exception):
    """An error gemmad reported. code: the proto's ErrorCode number; code_name its name."""

    def __init__(self, code: int, message: str, request_id: int = 0):
        self.code = int(code)
        try:
            self.code_name = pb.ErrorCode.Name(self.code)
        except ValueError:
            self.code_name = f"ERROR_{self.code}"
        self.message = message
        self.request_id = request_id
        super().__init__(f"{self.code_name}: {message}")


@dataclasses.dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float
    preemptions: int

    @classmethod
    def from_pb(cls, u: "pb.Usage") -> "Usage":
        return cls(u.prompt_tokens, u.completion_tokens, u.queue_ms, u.ttft_ms, u.total_ms, u.preemptions)


@dataclasses.dataclass
class TopLogprob:
    """One of the most likely tokens at a position."""

    token_id: int
    token: str  # the token alone as gemmad's tokenizer spells it (U+FFFD for part of a character)
    bytes: bytes  # its exact bytes (consecutive tokens' bytes join into the text)
    logprob: float


@dataclasses.dataclass
class TokenLogprob:
    """A generated token's log-probability: log_softmax of the model's raw logits at its position (before
    penalties, min_tokens, temperature, top_k and top_p), and the top_logprobs most likely tokens there."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float
    top: List[TopLogprob]


def _logprobs(c: "pb.GenerateChunk") -> List[TokenLogprob]:
    out = []
    for i, t in enumerate(c.logprobs):
        tid = c.token_ids[i] if i < len(c.token_ids) else -1
        strs = list(t.top_tokens) + [b""] * (len(t.top_ids) - len(t.top_tokens))  # an older gemmad sends none
        top = [TopLogprob(k, s.decode("utf-8", "replace"), bytes(s), lp)
               for k, lp, s in zip(t.top_ids, t.top_logprobs, strs)]
        out.append(TokenLogprob(tid, t.token.decode("utf-8", "replace"), bytes(t.token), t.logprob, top))
    return out


@dataclasses.dataclass
class Chunk:
    """A piece of a streamed answer: of choice `index` (0 unless n > 1). finish_reason is set on the last
    chunk of its choice, usage (and finished) on the request's last chunk, once every choice ended."""

    request_id: int
    text: str
    token_ids: List[int]
    finish_reason: Optional[str]  # None (more to come), "stop", "length", "cancelled"
    usage: Optional[Usage]
    logprobs: Optional[List[TokenLogprob]] = None  # with logprobs / top_logprobs: one per token id
    index: int = 0  # n > 1: the choice (0..n-1) these tokens belong to
    finished: bool = False  # the request's last chunk


@dataclasses.dataclass
class Result:
    """A whole answer (of one choice, with n > 1)."""

    request_id: int
    text: str
    token_ids: List[int]
    finish_reason: str
    usage: Usage
    logprobs: Optional[List[TokenLogprob]] = None  # with logprobs / top_logprobs: one per token id


Message = Union[Tuple[str, str], dict]


class Stream:
    """Iterator over the chunks of one streamed request. Raises GemmadError if it fails."""

    def __init__(self, client: "Client", request_id: int, timeout: Optional[float]):
        self._client = client
        self.request_id = request_id
        self._timeout = timeout
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        chunk = self._client._next_chunk(self.request_id, self._timeout)
        if chunk.finished:
            self._done = True
        return chunk

    def cancel(self) -> bool:
        """Ask gemmad to stop; the stream then ends with finish_reason "cancelled"."""
        return self._client.cancel(self.request_id)

    def close(self):
        """Stop listening; cancels the request if it has not finished."""
        if not self._done:
            self._done = True
            self._client._drop(self.request_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Client:
    """A connection to gemmad. endpoint: "tcp://host:port" or "ipc:///path". timeout: seconds
    a blocking call waits for each answer (None: forever)."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", timeout: Optional[float] = 30.0,
                 context: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._queues = {}  # request id -> deque of pb.GenerateChunk / reply / pb.Error
        self._dropped = set()  # streams closed early: their chunks are discarded
        self._want_lp = set()  # requests that asked for logprobs
        self._n = {}  # request id -> n, for requests with n > 1

    # ---- plumbing ----

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, rid: int, **body) -> int:
        msg = pb.ClientMessage(protocol_version=PROTOCOL_VERSION, request_id=rid, **body)
        self._queues.setdefault(rid, collections.deque())
        self._sock.send(msg.SerializeToString())
        return rid

    def _pump(self, deadline: Optional[float]):
        """Receive one ServerMessage (waiting until deadline) and sort its parts into queues."""
        if self._sock is None:
            raise GemmadError(pb.INTERNAL, "the client is closed")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._sock.poll(None if left is None else int(left * 1000) + 1, zmq.POLLIN):
            raise TimeoutError(f"gemmad at {self.endpoint} did not answer in time")
        m = pb.ServerMessage()
        m.ParseFromString(self._sock.recv())
        for c in m.chunks:
            if c.request_id in self._dropped:
                if c.HasField("usage"):  # the request's last chunk (every choice ended)
                    self._dropped.discard(c.request_id)
                continue
            self._queues.setdefault(c.request_id, collections.deque()).append(c)
        body = m.WhichOneof("body")
        if body is None:
            return
        reply = getattr(m, body)
        rid = reply.request_id
        if rid in self._dropped:  # the reply to a cancel sent by Stream.close
            self._dropped.discard(rid)
            return
        if body == "error" and rid not in self._queues:
            raise GemmadError(reply.code, reply.message, rid)
        self._queues.setdefault(rid, collections.deque()).append(reply)

    def _next(self, rid: int, timeout: Optional[float]):
        t = self.timeout if timeout is None else timeout
        deadline = None if t is None else time.monotonic() + t
        q = self._queues[rid]
        while not q:
            self._pump(deadline)
        return q.popleft()

    def _next_chunk(self, rid: int, timeout: Optional[float]) -> Chunk:
        ev = self._next(rid, timeout)
        if isinstance(ev, pb.Error):
            self._queues.pop(rid, None)
            self._want_lp.discard(rid)
            raise GemmadError(ev.code, ev.message, rid)
        finish = _FINISH.get(ev.finish_reason, "error")
        lps = _logprobs(ev) if rid in self._want_lp else None
        # the request's last chunk carries usage (with n = 1 it is the one with the finish_reason)
        last = ev.HasField("usage") or (finish is not None and self._n.get(rid, 1) == 1)
        if last or finish == "error":
            self._queues.pop(rid, None)
            self._want_lp.discard(rid)
            self._n.pop(rid, None)
        if finish == "error":
            if not last:  # n > 1: the other choices' ends follow; drop them
                self._dropped.add(rid)
            raise GemmadError(ev.error_code, ev.error_message, rid)
        return Chunk(rid, ev.text.decode("utf-8", "replace"), list(ev.token_ids), finish,
                     Usage.from_pb(ev.usage) if last else None, lps, ev.index, last)

    def _drop(self, rid: int):
        self._queues.pop(rid, None)
        self._want_lp.discard(rid)
        self._n.pop(rid, None)
        self._dropped.add(rid)
        try:
            cid = self._send(next(self._ids), cancel=pb.CancelRequest(target_request_id=rid))
            self._queues.pop(cid, None)
            self._dropped.add(cid)
        except zmq.ZMQError:
            pass

    def _reply(self, rid: int, timeout: Optional[float]):
        ev = self._next(rid, timeout)
        self._queues.pop(rid, None)
        if isinstance(ev, pb.Error):
            raise GemmadError(ev.code, ev.message, rid)
        return ev

    # ---- requests ----

    def _submit(self, prompt: Optional[str], tokens: Optional[Sequence[int]], messages: Optional[Iterable[Message]],
                stream: bool, max_tokens: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                seed: int = 0, stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
                presence_penalty: float = 0.0, frequency_penalty: float = 0.0, repetition_penalty: float = 1.0,
                min_tokens: int = 0, logprobs: bool = False, top_logprobs: int = 0, n: int = 1,
                beam_width: int = 0, length_penalty: Optional[float] = None, early_stopping: bool = False,
                speculative_tokens: int = 0) -> int:
        if sum(x is not None for x in (prompt, tokens, messages)) != 1:
            raise ValueError("give exactly one of prompt, tokens, messages")
        if isinstance(stop, str):
            stop = [stop]
        g = pb.GenerateRequest(max_tokens=max_tokens, stop=list(stop), stop_token_ids=list(stop_token_ids),
                               stream=stream, ignore_eos=ignore_eos, min_tokens=min_tokens,
                               logprobs=bool(logprobs or top_logprobs), top_logprobs=top_logprobs, n=n,
                               sampling=pb.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                                          seed=seed, presence_penalty=presence_penalty,
                                                          frequency_penalty=frequency_penalty,
                                                          repetition_penalty=repetition_penalty),
                               beam_width=beam_width, early_stopping=early_stopping,
                               speculative_tokens=speculative_tokens)
        if length_penalty is not None:
            g.length_penalty = length_penalty
        if prompt is not None:
            g.text = prompt
        elif tokens is not None:
            g.tokens.ids.extend(int(t) for t in tokens)
        else:
            for m in messages:
                role, text = (m["role"], m.get("content", m.get("text", ""))) if isinstance(m, dict) else m
                g.chat.messages.add(role=role, text=text)
        rid = self._send(next(self._ids), generate=g)
        if g.logprobs:
            self._want_lp.add(rid)
        if n > 1:
            self._n[rid] = n
        return rid

    def generate(self, prompt: Optional[str] = None, *, tokens: Optional[Sequence[int]] = None,
                 messages: Optional[Iterable[Message]] = None, timeout: Optional[float] = None,
                 **sampling) -> Union[Result, List[Result]]:
        """Generate and wait for the whole answer. prompt: text (BOS added by gemmad); tokens: ids used
        verbatim; messages: [(role, text)] or [{"role", "content"}] for Gemma's chat template.
        timeout: seconds for the whole answer (default: the client's). Keyword arguments (gemma.proto's
        GenerateRequest and SamplingParams): max_tokens (0, the default: until EOS or the context is full),
        temperature (0, the default: greedy), top_k, top_p, seed, stop, stop_token_ids, ignore_eos,
        presence_penalty, frequency_penalty ([-2, 2]), repetition_penalty (> 0, 1 = off), min_tokens,
        logprobs (True: Result.logprobs has one TokenLogprob per token id) and top_logprobs (0..20
        alternatives with each; implies logprobs), n (choices from the prompt, 1..64: choice i samples with
        seed + i and has its own tokens, logprobs and penalties; n > 1 returns a list of Results in index
        order, each with the request's usage), beam_width (2..8: beam search, greedy, not streamed; the n
        best hypotheses come back, best first), length_penalty (default 1: a hypothesis scores sum logprob /
        tokens ** length_penalty), early_stopping, speculative_tokens (prompt-lookup speculative decoding:
        0 = gemmad's default, -1 = off, 1..16 tokens drafted a step; the output is the same either way)."""
        n = sampling.get("n", 1)
        rid = self._submit(prompt, tokens, messages, False, **sampling)
        parts = {i: ([], [], None, None) for i in range(max(n, 1))}  # index -> text, ids, logprobs, finish
        while True:
            c = self._next_chunk(rid, timeout)
            text, ids, lps, fin = parts.setdefault(c.index, ([], [], None, None))
            text.append(c.text)
            ids.extend(c.token_ids)
            if c.logprobs is not None:
                lps = (lps or []) + c.logprobs
            parts[c.index] = (text, ids, lps, c.finish_reason or fin)
            if c.finished:
                if c.finish_reason == "cancelled":
                    raise GemmadError(pb.CANCELLED, "the request was cancelled", rid)
                out = [Result(rid, "".join(t), i, f, c.usage, lp) for _, (t, i, lp, f) in sorted(parts.items())]
                return out if n > 1 else out[0]

    def stream(self, prompt: Optional[str] = None, *, tokens: Optional[Sequence[int]] = None,
               messages: Optional[Iterable[Message]] = None, timeout: Optional[float] = None,
               **sampling) -> Stream:
        """As generate, but returns at once an iterator of Chunks (timeout: per chunk); with logprobs,
        each Chunk's logprobs has one TokenLogprob per token id it carries; with n > 1, Chunk.index says
        which choice, and the iterator ends after the request's last chunk (Chunk.finished)."""
        rid = self._submit(prompt, tokens, messages, True, **sampling)
        return Stream(self, rid, timeout)

    def cancel(self, request_id: int, timeout: Optional[float] = None) -> bool:
        """Cancel a request in flight on this connection; False if gemmad no longer had it."""
        rid = self._send(next(self._ids), cancel=pb.CancelRequest(target_request_id=request_id))
        try:
            return self._reply(rid, timeout).found
        except GemmadError as e:
            if e.code == pb.NOT_FOUND:  # finished (or never sent) on this connection
                return False
            raise

    def health(self, timeout: Optional[float] = None) -> "pb.HealthReply":
        """serving, shutting_down, model, backend, tp, version, uptime_s."""
        rid = self._send(next(self._ids), health=pb.HealthRequest())
        return self._reply(rid, timeout)

    def stats(self, timeout: Optional[float] = None) -> "pb.StatsReply":
        """running, waiting, KV blocks, request and token counters, latency percentiles, ..."""
        rid = self._send(next(self._ids), stats=pb.StatsRequest())
        return self._reply(rid, timeout)
