"""Pairwise judging throughput: `rtune judge` (sliding window of concurrent calls, both orders)
vs the sequential loop of the original evaluation scripts (one judge call after the other),
against the loopback OpenAI-compatible server with injected latency, on the real Vicuna
questions (../shared/data). Also: the cost of a rerun (everything is in the run store) and the
score-line parser's speed on realistic judge texts.

    python benchmarks/bench_judge.py [--latency 0.1] [--concurrency 16] [--set vicuna]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from oracle_server import OracleServer  # noqa: E402
from rtune.endpoint_config import EndpointConfig  # noqa: E402
from rtune.judge import judge  # noqa: E402
from rtune.judge_parse import parse_scores  # noqa: E402
from rtune.testsets import load_test_set  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\[The End", re.DOTALL)
TEXTS = ["8 7\nAssistant 1 gave a more detailed answer.", "Assistant 1: 8, Assistant 2: 7",
         "**Assistant 1:** 6/10 | **Assistant 2:** 9/10", "Evaluation:\nAssistant 1: 8/10\n"
         "Assistant 2: 5/10\nMore precise.", "Both are fine, I cannot decide.", "7.5, 8\nOk."]


def judge_reply(body: dict) -> str:
    answers = dict(ANSWER.findall(body["messages"][-1]["content"]))
    return f"{len(answers['1'].split())} {len(answers['2'].split())}\nLonger is better here."


def write_sides(folder: Path, test_set: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    paths = []
    for side in ("a", "b"):
        rows = [{"question_id": q.id, "test_set": q.test_set, "instruction": q.instruction,
                 "output": " ".join(["word"] * rng.randint(1, 9)), "generator": side}
                for q in load_test_set(test_set)]
        p = folder / f"{side}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1]


def timed_judge(server: OracleServer, a: Path, b: Path, run_dir: Path, concurrency: int):
    before = len(server.requests)
    t = time.perf_counter()
    res = judge([a], [b], judge_spec=server.url, model="bench-judge", run_dir=run_dir,
                options=EndpointConfig(concurrency=concurrency), resamples=200)
    return time.perf_counter() - t, len(server.requests) - before, res["overall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.1, help="mean judge latency (s, exp)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--set", default="vicuna", help="test set name in ../shared/data")
    args = ap.parse_args()
    test_set = DATA / f"{args.set}_test_set.jsonl"
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, OracleServer(
            latency=lambda: rng.expovariate(1 / args.latency)) as server:
        server.script(judge_reply)
        folder = Path(tmp)
        a, b = write_sides(folder, test_set)
        rows = []
        base = timed_judge(server, a, b, folder / "seq", 1)
        rows.append(("sequential (baseline)", *base))
        fast = timed_judge(server, a, b, folder / "run", args.concurrency)
        rows.append((f"rtune judge, concurrency {args.concurrency}", *fast))
        again = timed_judge(server, a, b, folder / "run", args.concurrency)
        rows.append(("rerun (resume, all stored)", *again))
    assert base[2] == fast[2] == again[2], "the three runs disagree"
    n = base[2]["n"]
    print(f"{args.set}: {n} questions x 2 orders, judge latency exp mean {args.latency}s")
    print(f"{'run':<30} {'wall s':>8} {'calls':>6} {'calls/s':>8}")
    for name, wall, calls, _ in rows:
        print(f"{name:<30} {wall:>8.2f} {calls:>6} {calls / wall if calls else 0:>8.1f}")
    print(f"speed-up vs sequential: {base[0] / fast[0]:.1f}x; rerun: {again[0]:.2f}s, "
          f"{again[1]} calls; W/T/L {fast[2]['win']}/{fast[2]['tie']}/{fast[2]['loss']}")
    reps = 20000
    t = time.perf_counter()
    for i in range(reps):
        parse_scores(TEXTS[i % len(TEXTS)])
    print(f"parse_scores: {reps / (time.perf_counter() - t):,.0f} judge texts/s")


if __name__ == "__main__":
    main()
