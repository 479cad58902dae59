#!/usr/bin/env python3
"""test_cli_sampling.py GEMMAD GEMMA_CLI GEMMA_GENERATE TINY_DIR - the sampling extensions in gemma-cli (over
the RPC) and gemma-generate (offline, the same CPU engine).

Checked: --presence-penalty, --frequency-penalty, --repetition-penalty and --min-tokens give gemma-cli
exactly gemma-generate's output (greedy and seeded, plain and chat), and change it; --print-logprobs
prints one JSON line per generated token (its id, string, log-probability and --logprobs N
alternatives, most likely first; greedy: the token is its own first alternative) whose strings join
into the text; --min-tokens holds back a stop id; bad values exit non-zero with the reason."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemmad_http import Daemon  # noqa: E402

GEMMAD, CLI, GENERATE, TINY = sys.argv[1:5]


def run(*argv):
    p = subprocess.run(list(argv), capture_output=True, timeout=300)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def cli(d, *args):
    rc, out, err = run(CLI, "--endpoint", d.endpoint, *args)
    assert rc == 0, (args, err)
    return out


def generate(*args):
    rc, out, err = run(GENERATE, "--model", TINY, *args)
    assert rc == 0, (args, err)
    return out


def test_same_as_generate(d):
    cases = [("--presence-penalty", "2"), ("--frequency-penalty", "1"), ("--repetition-penalty", "5"),
             ("--presence-penalty", "-1.5", "--frequency-penalty", "0.5", "--repetition-penalty", "1.3"),
             ("--min-tokens", "6")]
    for prompt in ("The quick brown fox", "Once upon a time"):
        for mode in ((), ("--chat",), ("--temperature", "0.8", "--seed", "3")):
            plain = generate("--prompt", prompt, "--max-tokens", "16", *mode)
            for flags in cases:
                want = generate("--prompt", prompt, "--max-tokens", "16", *mode, *flags)
                got = cli(d, "--max-tokens", "16", *mode, *flags, prompt)
                assert got == want, (prompt, mode, flags, got, want)
                if flags[0] != "--min-tokens" and mode != ("--chat",):  # the tiny model's chat is all newlines
                    assert want != plain, (prompt, mode, flags, want)


def test_print_logprobs(d):
    prompt = "The quick brown fox"
    text = cli(d, "--max-tokens", "12", prompt)[:-1]
    out = cli(d, "--max-tokens", "12", "--logprobs", "4", "--print-logprobs", prompt)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 12, out
    for t in lines:
        assert set(t) == {"id", "token", "logprob", "top_logprobs"} and t["logprob"] <= 0, t
        top = t["top_logprobs"]
        assert len(top) == 4 and top[0]["id"] == t["id"] and top[0]["logprob"] == t["logprob"], t
        assert top[0]["token"] == t["token"] and all(set(a) == {"id", "token", "logprob"} for a in top), t
        assert [a["logprob"] for a in top] == sorted((a["logprob"] for a in top), reverse=True), t
    assert "".join(t["token"] for t in lines) == text, (lines, text)
    # the same with --top-logprobs, and streamed or not
    assert cli(d, "--max-tokens", "12", "--top-logprobs", "4", "--print-logprobs", "--no-stream", prompt) == out
    # --print-logprobs alone: no alternatives
    lines0 = [json.loads(line) for line in cli(d, "--max-tokens", "3", "--print-logprobs", prompt).splitlines()]
    assert [(t["id"], t["logprob"], t["top_logprobs"]) for t in lines0] == \
        [(t["id"], t["logprob"], []) for t in lines[:3]]
    # --min-tokens holds back a stop id: the first greedy token as one
    first = str(lines[0]["id"])
    stopped = [json.loads(x) for x in cli(d, "--max-tokens", "8", "--stop-id", first, "--print-logprobs",
                                          prompt).splitlines()]
    assert [t["id"] for t in stopped] == [lines[0]["id"]], stopped
    held = [json.loads(x) for x in cli(d, "--max-tokens", "8", "--stop-id", first, "--min-tokens", "4",
                                       "--print-logprobs", prompt).splitlines()]
    assert len(held) >= 4 and all(t["id"] != lines[0]["id"] for t in held[:4]), held


def test_bad_values(d):
    for args, why in [(("--logprobs", "21"), "--logprobs"), (("--min-tokens", "-1"), "--min-tokens"),
                      (("--presence-penalty", "3"), "presence_penalty"),
                      (("--repetition-penalty", "-1"), "repetition_penalty"),
                      (("--max-tokens", "4", "--min-tokens", "5"), "min_tokens")]:
        rc, out, err = run(CLI, "--endpoint", d.endpoint, *args, "hi")
        assert rc != 0 and why in err, (args, rc, err)


def main():
    with tempfile.TemporaryDirectory(prefix="gd-cli-") as tmp:
        d = Daemon(GEMMAD, tmp, "cli", "--model", TINY, "--backend", "cpu")
        try:
            test_same_as_generate(d)
            test_print_logprobs(d)
            test_bad_values(d)
        except BaseException:
            print(d.logtext()[-3000:])
            raise
        finally:
            d.stop()
    print("ok")


if __name__ == "__main__":
    main()
