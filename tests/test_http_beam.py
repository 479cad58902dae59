#!/usr/bin/env python3
"""test_http_beam.py - beam search over gemmad's OpenAI HTTP API with the official openai package.

  test_http_beam.py GEMMAD GEMMA_CLI TINY_MODEL_DIR

vLLM's names through extra_body: use_beam_search, best_of (the beam width on /v1/completions; else n),
length_penalty, early_stopping. Checked on the tiny model (cpu backend):
  - /v1/completions: n hypotheses of best_of beams, best first by sum logprob / tokens^length_penalty,
    the best one equal to gemma-cli --beam-width over the RPC (itself checked against a reference search
    by test_daemon_beam); usage counts the hypotheses' tokens;
  - /v1/chat/completions: n beams, n hypotheses, logprobs;
  - temperature > 0, streaming, a width outside 2..8 are 400s naming the field;
  - gemmad_beam_forks_total / gemmad_beam_shared_blocks_total count the forks; no KV block stays used.
Exit 0 pass, 1 fail, 77 when the openai package cannot be had."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemmad_http import metric, need_module, serving  # noqa: E402

GEMMAD, CLI, TINY = sys.argv[1], sys.argv[2], sys.argv[3]
PROMPT = "Once upon a time, in a small village by the sea"


def score(lps, stopped, lp):
    """The ranking score of a hypothesis from its tokens' logprobs (a final stop token is not counted
    in the length)."""
    n = len(lps) - (1 if stopped else 0)
    return sum(lps) / (max(n, 1) ** lp)


def check_ranked(choices, lps_of, lp):
    scores = [score(lps_of(c), c.finish_reason == "stop", lp) for c in choices]
    assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:])), scores
    return scores


def main():
    openai = need_module("openai", "openai")
    with tempfile.TemporaryDirectory() as tmp, \
            serving(GEMMAD, tmp, "beam", "--model", TINY, "--backend", "cpu", "--kv-blocks", "64") as d:
        cl = openai.OpenAI(base_url=d.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        model = cl.models.list().data[0].id

        # completions: 4 beams, the 3 best back
        for lp, es in ((1.0, False), (0.5, True), (2.0, False)):
            r = cl.completions.create(model=model, prompt=PROMPT, max_tokens=10, n=3, logprobs=0,
                                      extra_body={"use_beam_search": True, "best_of": 4, "length_penalty": lp,
                                                  "early_stopping": es})
            assert len(r.choices) == 3, r
            ch = sorted(r.choices, key=lambda c: c.index)
            assert [c.index for c in ch] == [0, 1, 2]
            scores = check_ranked(ch, lambda c: c.logprobs.token_logprobs, lp)
            assert all(c.finish_reason in ("stop", "length") for c in ch)
            assert r.usage.completion_tokens == sum(len(c.logprobs.token_logprobs) for c in ch), r.usage
            texts = {c.text for c in ch}
            assert len(texts) == 3 or any(c.finish_reason == "stop" for c in ch), texts
            cli = subprocess.run([CLI, "--endpoint", d.endpoint, "--beam-width", "4", "--max-tokens", "10",
                                  "--length-penalty", str(lp), *(["--early-stopping"] if es else []), PROMPT],
                                 capture_output=True, text=True, timeout=120)
            assert cli.returncode == 0, cli.stderr
            assert cli.stdout[:-1] == ch[0].text, (cli.stdout, ch[0].text)
            print(f"completions lp {lp} es {es}: scores {[round(s, 4) for s in scores]}")

        # chat: n = 3 beams, 3 hypotheses
        r = cl.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                                       max_tokens=8, n=3, logprobs=True, extra_body={"use_beam_search": True})
        assert len(r.choices) == 3, r
        ch = sorted(r.choices, key=lambda c: c.index)
        check_ranked(ch, lambda c: [t.logprob for t in c.logprobs.content], 1.0)

        # what beam search does not take
        bad = [
            ({"temperature": 0.8}, "use_beam_search"),
            ({"stream": True}, "use_beam_search"),
            ({"extra_body": {"use_beam_search": True, "best_of": 9}}, "best_of"),
            ({"n": 1}, "n"),
        ]
        for kw, param in bad:
            body = {"use_beam_search": True, "best_of": 4}
            body.update(kw.pop("extra_body", {}))
            args = {"model": model, "prompt": PROMPT, "max_tokens": 4, "n": 2, **kw}
            if param == "n":
                body.pop("best_of")
            try:
                r = cl.completions.create(extra_body=body, **args)
                if kw.get("stream"):
                    list(r)
                raise AssertionError(f"{kw}: accepted")
            except openai.BadRequestError as e:
                assert e.body and e.body.get("param") == param, (kw, e.body)

        m = d.metrics()
        assert metric(m, "gemmad_beam_forks_total") > 0
        assert metric(m, "gemmad_beam_shared_blocks_total") > 0
        d.wait_metric("gemmad_kv_cache_blocks_used", 0.0)
        d.wait_metric("gemmad_num_requests_running", 0.0)
    print("ok")


if __name__ == "__main__":
    main()
