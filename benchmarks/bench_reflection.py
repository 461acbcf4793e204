"""Reflection-format parser: how often the final answer is recovered, and how fast.

Builds replies in the shapes real models produce (well-formed, unclosed tags, repeated blocks,
tags in code, fenced replies, no tags...), each around a known answer (real Alpaca answers when
../shared/data is there, else generated text), and compares rtune's ``extract_output`` with the
naive baseline ``re.search(r"<output>(.*?)</output>")`` (else the whole text), run in the same
process: exact-answer rate per shape, then replies/s.

Then `rtune reflect` over the engine against the loopback server (tests/oracle_server.py,
fixed latency per call): format and loop mode at --concurrency vs one call at a time (the
baseline, same process), and a rerun on the same run store (resume: no call is made).

    python benchmarks/bench_reflection.py [--per-shape 300] [--repeat 3] [--questions 64]
        [--latency 0.05] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rtune.reflect import reflect
from rtune.reflection import extract_output

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_NAIVE = re.compile(r"<output>(.*?)</output>", re.DOTALL)


def naive(text: str) -> str:
    m = _NAIVE.search(text)
    return m.group(1).strip() if m else text.strip()


def rtune_parser(text: str) -> str:
    return extract_output(text)[0]


def answers(n: int, rng: random.Random) -> list[str]:
    path = DATA / "cherry_alpaca_5_percent.json"
    if path.exists():
        pool = [r["output"].strip() for r in json.loads(path.read_text()) if r["output"].strip()]
        pool = [a for a in pool if "<" not in a]  # answers that mention tags are their own case
        return rng.sample(pool, n)
    words = "the coin cup bed turned over falls lies because so then".split()
    return [" ".join(rng.choices(words, k=rng.randint(5, 120))).capitalize() + "."
            for _ in range(n)]


T, R = "The coin starts in the cup and the cup is placed on the bed.", "Turned over, it drops."
SHAPES: dict[str, Callable[[str], tuple[str, str]]] = {  # answer -> (reply, expected output)
    "well-formed": lambda a: (f"<thinking>{T}<reflection>{R}</reflection></thinking>\n"
                              f"<output>{a}</output>", a),
    "output unclosed": lambda a: (f"<thinking>{T}</thinking><output>\n{a}", a),
    "reflection unclosed": lambda a: (f"<thinking>{T}<reflection>{R}</thinking>"
                                      f"<output>{a}</output>", a),
    "repeated output": lambda a: (f"<thinking>{T}</thinking><output>draft</output>"
                                  f"<reflection>{R}</reflection><output>{a}</output>", a),
    "tag in inline code": lambda a: (f"<thinking>I answer in `<output>` tags.</thinking>"
                                     f"<output>{a}</output>", a),
    "tags in code inside output": lambda a: (
        f"<thinking>{T}</thinking><output>{a}\n```html\n<output>x</output>\n```</output>",
        f"{a}\n```html\n<output>x</output>\n```"),
    "whole reply fenced": lambda a: (f"```xml\n<thinking>{T}</thinking>\n<output>{a}</output>\n"
                                     "```", a),
    "upper-case / spaced tags": lambda a: (f"<Thinking>{T}</Thinking>< OUTPUT >{a}</ OUTPUT >",
                                           a),
    "no output tag": lambda a: (f"<thinking>{T}</thinking>\n{a}", a),
    "no tags": lambda a: (a, a),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-shape", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="timing passes (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=64, help="inference: questions")
    ap.add_argument("--latency", type=float, default=0.05, help="inference: s per call")
    ap.add_argument("--concurrency", type=int, default=16, help="inference: calls in flight")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    cases: list[tuple[str, str, str]] = []
    for shape, make in SHAPES.items():
        for ans in answers(a.per_shape, rng):
            reply, expected = make(ans)
            cases.append((shape, reply, expected))
    parsers = {"rtune": rtune_parser, "naive regex": naive}

    print(f"{len(cases)} replies, {a.per_shape} per shape, answers from "
          f"{'cherry_alpaca_5_percent.json' if DATA.exists() else 'generated text'}\n")
    print(f"{'shape':28s} {'rtune':>7s} {'naive':>7s}")
    totals = {name: 0 for name in parsers}
    for shape in SHAPES:
        mine = [c for c in cases if c[0] == shape]
        row = []
        for name, fn in parsers.items():
            ok = sum(fn(reply) == expected for _, reply, expected in mine)
            totals[name] += ok
            row.append(ok / len(mine))
        print(f"{shape:28s} {row[0]:7.1%} {row[1]:7.1%}")
    print(f"{'all':28s} {totals['rtune'] / len(cases):7.1%} {totals['naive regex'] / len(cases):7.1%}")

    speed = {}
    for name, fn in parsers.items():
        best = float("inf")
        for _ in range(a.repeat):
            start = time.perf_counter()
            for _, reply, _ in cases:
                fn(reply)
            best = min(best, time.perf_counter() - start)
        speed[name] = len(cases) / best
    mean_chars = sum(len(c[1]) for c in cases) / len(cases)
    print(f"\nspeed (mean reply {mean_chars:.0f} chars): rtune {speed['rtune']:,.0f} replies/s, "
          f"naive {speed['naive regex']:,.0f} replies/s, ratio rtune/naive "
          f"{speed['rtune'] / speed['naive regex']:.3f}")
    if a.questions > 0:
        inference(a)



def loopback_reply(body: dict) -> str:
    """A scripted model: tagged replies in format mode, verdict "revise" in loop critiques."""
    user = body["messages"][-1]["content"]
    if body["messages"][0]["content"].lstrip().startswith("You are a careful assistant that"):
        return f"<thinking>{T}<reflection>{R}</reflection></thinking><output>bed</output>"
    if user.startswith("Here is a question and an answer"):
        return "The cup was turned over.\nVerdict: revise"
    return f"The coin is on the bed ({len(user)})."  # each round's revision differs


def inference(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from oracle_server import OracleServer  # the loopback server of the tests

    questions = [f"Question {i}: where is the coin?" for i in range(a.questions)]
    print(f"\nrtune reflect, {a.questions} questions, loopback latency {a.latency:g} s per call")
    print(f"{'mode':16s} {'calls':>6s} {'1 at a time':>12s} {f'concurrency {a.concurrency}':>15s}"
          f" {'ratio':>7s} {'rerun (resume)':>15s}")
    with OracleServer(latency=lambda: a.latency) as server:
        server.script(loopback_reply)
        for mode, rounds in (("format", 0), ("loop", 2)):
            times, calls = {}, 0
            for conc in (1, a.concurrency):
                with tempfile.TemporaryDirectory() as run:
                    before = len(server.requests)
                    kw = dict(oracle=server.url, model="m", mode=mode, rounds=rounds,
                              run_dir=run, concurrency=conc, stop_when_correct=False)
                    start = time.perf_counter()
                    results = reflect(questions, **kw)
                    times[conc] = time.perf_counter() - start
                    calls = len(server.requests) - before
                    assert all(r["answer"] for r in results), results[0]
                    start = time.perf_counter()
                    reflect(questions, **kw)
                    rerun = time.perf_counter() - start
                    assert len(server.requests) - before == calls  # resume: no new call
            label = mode if mode == "format" else f"loop, {rounds} rounds"
            print(f"{label:16s} {calls:6d} {times[1]:11.2f}s {times[a.concurrency]:14.2f}s "
                  f"{times[1] / times[a.concurrency]:6.1f}x {rerun:14.2f}s")


if __name__ == "__main__":
    main()
