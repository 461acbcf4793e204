"""Pairwise judge: the W/T/L rule, the score-line parser, win-rate + bootstrap, full runs against
the loopback OpenAI-compatible server (re-ask, failures, kill -9 + resume), review import."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oracle_server import request_key
from rtune.cli import main
from rtune.errors import InputError
from rtune.extras import missing
from rtune.judge import import_reviews, judge
from rtune.judge_parse import bootstrap_ci, outcome, parse_scores, win_rate_score
from rtune.store import RunStore


def assert_chart(path: Path) -> None:
    """The W/T/L chart is drawn where matplotlib (the report extra) is installed, else left out."""
    if missing("report") is None:
        assert path.read_bytes()[:4] == b"\x89PNG"
    else:
        assert not path.exists()

# ---------------------------------------------------------------- W/T/L rule

# DESIGN.md §5 written out by hand: (A vs B in order 1, A vs B in order 2) -> A's result.
RULE = {
    ("better", "better"): "win", ("better", "equal"): "win", ("equal", "better"): "win",
    ("equal", "equal"): "tie", ("better", "worse"): "tie", ("worse", "better"): "tie",
    ("worse", "worse"): "loss", ("worse", "equal"): "loss", ("equal", "worse"): "loss",
}
A_VS_B = {"better": (8.0, 5.0), "equal": (6.0, 6.0), "worse": (3.0, 7.5)}


@pytest.mark.parametrize(("first", "second"), sorted(RULE))
def test_wtl_rule_every_combination_of_orders(first, second):
    a1, b1 = A_VS_B[first]
    a2, b2 = A_VS_B[second]
    forward = (a1, b1)  # A is assistant 1
    reverse = (b2, a2)  # answers swapped: B is assistant 1, scores as the judge wrote them
    assert outcome(forward, reverse) == RULE[(first, second)]
    # the same question seen from B's side is the mirror image
    mirror = {"win": "loss", "loss": "win", "tie": "tie"}[RULE[(first, second)]]
    assert outcome((b2, a2), (a1, b1)) == mirror


def test_wtl_rule_is_symmetric_on_a_grid():
    grid = [1.0, 5.0, 5.5, 10.0]
    for s in itertools.product(grid, repeat=4):
        fwd, rev = (s[0], s[1]), (s[2], s[3])
        a_view = outcome(fwd, rev)
        b_view = outcome(rev, fwd)  # B's side: B is assistant 1 in the swapped judgment
        assert {a_view, b_view} in ({"win", "loss"}, {"tie"})


# ---------------------------------------------------------------- score-line parser

PARSED = [
    ("8 7\nAssistant 1 gave a more detailed answer...", (8, 7)),
    ("9 6\n\nBoth assistants explain the basics, but Assistant 2 omits...", (9, 6)),
    ("8/10 7/10\nExplanation follows.", (8, 7)),
    ("8, 7\nThe first answer...", (8, 7)),
    ("8,7", (8, 7)),
    ("7.5 8\nAssistant 2 is slightly more accurate.", (7.5, 8)),
    ("Assistant 1: 8, Assistant 2: 7", (8, 7)),
    ("Assistant 2: 4, Assistant 1: 9", (9, 4)),
    ("**Assistant 1:** 6/10 | **Assistant 2:** 9/10", (6, 9)),
    ("Scores: 8/10 for Assistant 1 and 6/10 for Assistant 2.", (8, 6)),
    ("I would rate Assistant 1 a 7 and Assistant 2 an 8.", (7, 8)),
    ("Answer A: 8; Answer B: 6\nA is better.", (8, 6)),
    ("**8** **6**\n\nAssistant 1 provides...", (8, 6)),
    ("Evaluation:\nAssistant 1: 8/10\nAssistant 2: 5/10\nAssistant 1 is more precise.", (8, 5)),
    ("Assistant 1's score: 9\nAssistant 2's score: 4\n", (9, 4)),
    ("  \n 10 10\nBoth are perfect.", (10, 10)),
    ("8 out of 10 and 7 out of 10", (8, 7)),
]
UNPARSEABLE = [
    "",
    "Both answers are helpful, but the second is more detailed.",
    "8 7 6\nthree numbers",
    "11 3\nout of range",
    "Assistant 1 did better.\nAssistant 2 was vague.",
    "Assistant 1: 8\nExplanation: only one score is given",
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parser_reads_realistic_judge_texts(text, expected):
    assert parse_scores(text) == (float(expected[0]), float(expected[1]))


@pytest.mark.parametrize("text", UNPARSEABLE)
def test_parser_refuses_what_it_cannot_read(text):
    assert parse_scores(text) is None


# ---------------------------------------------------------------- win rate + bootstrap


def test_win_rate_score_and_bootstrap_interval():
    assert win_rate_score(10, 0, 10) == 2.0 and win_rate_score(0, 10, 10) == 0.0
    assert win_rate_score(5, 3, 10) == pytest.approx(1.2)
    assert bootstrap_ci(["win"] * 20) == (2.0, 2.0)
    results = ["win"] * 50 + ["tie"] * 20 + ["loss"] * 30
    lo, hi = bootstrap_ci(results, resamples=1000, seed=1)
    assert lo < 1.2 < hi and 0.15 < hi - lo < 0.6  # sd of the mean ~0.087 -> width ~0.34
    assert bootstrap_ci(results, resamples=1000, seed=1) == (lo, hi)  # reproducible
    assert bootstrap_ci([]) is None


# ---------------------------------------------------------------- full runs on the loopback


ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\[The End", re.DOTALL)


def quality(answer: str) -> int:
    return int(re.search(r"quality (\d+)", answer).group(1))


def fair_judge(body):
    """Scores each answer by the quality written into it."""
    user = body["messages"][1]["content"]
    answers = dict(ANSWER.findall(user))
    return f"{quality(answers['1'])} {quality(answers['2'])}\nExplanation of the scores."


def write_sides(tmp_path: Path, qualities: list[tuple[int, int]], *, sets=("vicuna", "koala")):
    a, b = [], []
    for i, (qa, qb) in enumerate(qualities):
        ts = sets[i % len(sets)]
        q = f"Question {i} of {ts}?"
        a.append({"question_id": i, "test_set": ts, "instruction": q,
                  "output": f"A answers {i} with quality {qa}", "generator": "recycled"})
        b.append({"question_id": i, "test_set": ts, "instruction": q,
                  "output": f"B answers {i} with quality {qb}", "generator": "alpaca"})
    pa, pb = tmp_path / "recycled.jsonl", tmp_path / "alpaca.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in a))
    pb.write_text("".join(json.dumps(r) + "\n" for r in b))
    return pa, pb


def expected(qualities, bias=0):
    """Independent expectation: a judge adding ``bias`` to assistant 1, then the rule."""
    counts = {"win": 0, "tie": 0, "loss": 0}
    for qa, qb in qualities:
        first = "better" if qa + bias > qb else "equal" if qa + bias == qb else "worse"
        second = "better" if qa > qb + bias else "equal" if qa == qb + bias else "worse"
        counts[RULE[(first, second)]] += 1
    return counts


def run_judge(server, tmp_path, pa, pb, **kw):
    return judge([pa], [pb], judge_spec=server.url, model="judge-x",
                 run_dir=tmp_path / "run", out_dir=tmp_path / "out", resamples=200, **kw)


def test_full_judge_run_counts_per_test_set(oracle_server, tmp_path):
    qualities = [(8, 5), (5, 8), (7, 7), (9, 2), (6, 6), (3, 4), (10, 9), (4, 4)]
    pa, pb = write_sides(tmp_path, qualities)
    oracle_server.script(fair_judge)
    res = run_judge(oracle_server, tmp_path, pa, pb)
    assert len(oracle_server.requests) == 2 * len(qualities)
    o = res["overall"]
    assert {k: o[k] for k in ("win", "tie", "loss")} == expected(qualities)
    assert o["score"] == pytest.approx((o["win"] - o["loss"]) / o["n"] + 1)
    vic = res["test_sets"]["vicuna"]  # even indices
    assert {k: vic[k] for k in ("win", "tie", "loss")} == expected(qualities[::2])
    assert res["a"] == "recycled" and res["b"] == "alpaca"
    assert res["judge"]["model"] == "judge-x" and res["judge"]["prompt_version"] == "1"
    # both orders were sent: each answer appears once as assistant 1
    firsts = [ANSWER.findall(b["messages"][1]["content"])[0][1] for b in oracle_server.requests]
    assert sum(f.startswith("A ") for f in firsts) == len(qualities)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["overall"]["win"] == o["win"] and saved["failures"] == {}
    assert_chart(out / "wtl.png")
    rows = [json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()]
    assert len(rows) == len(qualities) and all("outcome" in r for r in rows)
    with RunStore(tmp_path / "run") as store:  # raw judge texts kept
        stored = dict(store.items("judgments"))
    assert len(stored) == 2 * len(qualities)
    assert all(v["raw"].endswith("Explanation of the scores.") for v in stored.values())
    # a rerun pays for nothing
    before = len(oracle_server.requests)
    again = run_judge(oracle_server, tmp_path, pa, pb)
    assert len(oracle_server.requests) == before and again["overall"] == o


def test_position_biased_judge_follows_the_rule(oracle_server, tmp_path):
    """A judge that favours assistant 1 by one point: ties where the answers are equal, wins
    where A is one point better (better + equal)."""
    qualities = [(5, 5), (6, 5), (7, 5), (5, 6), (5, 7), (4, 4)]
    pa, pb = write_sides(tmp_path, qualities, sets=("wizardlm",))

    def biased(body):
        s1, s2 = (int(x) for x in fair_judge(body).split("\n")[0].split())
        return f"{s1 + 1} {s2}\nI prefer the first."

    oracle_server.script(biased)
    res = run_judge(oracle_server, tmp_path, pa, pb)
    counts = {k: res["overall"][k] for k in ("win", "tie", "loss")}
    assert counts == expected(qualities, bias=1) == {"win": 2, "tie": 2, "loss": 2}


def test_unparseable_reply_is_reasked_once_then_a_failure_not_a_tie(oracle_server, tmp_path):
    qualities = [(8, 5), (5, 5), (6, 9)]
    pa, pb = write_sides(tmp_path, qualities, sets=("lima",))

    def flaky(body):
        user = body["messages"][1]["content"]
        reasked = len(body["messages"]) > 2
        if "answers 0 " in user:  # never gives scores
            return "Both answers have merit; I cannot decide."
        if "answers 1 " in user and not reasked:  # gives them when asked again
            return "Assistant 1 is fine. Assistant 2 is fine too."
        return fair_judge(body)

    oracle_server.script(flaky)
    res = run_judge(oracle_server, tmp_path, pa, pb)
    o = res["overall"]
    assert (o["win"], o["tie"], o["loss"], o["failed"]) == (0, 1, 1, 1)
    assert res["failures"] == {"unparseable": 1}
    assert res["failed_questions"] == ["lima/0"]
    reasks = [b for b in oracle_server.requests if len(b["messages"]) > 2]
    assert len(reasks) == 4  # question 0 and 1, both orders, once each
    with RunStore(tmp_path / "run") as store:
        assert store.failure_counts() == {"unparseable": 2}
        j = store.get_item("judgments", "lima/1|ab")
        assert j["status"] == "ok" and "raw_reask" in j and j["scores"] == [5.0, 5.0]


def test_mismatched_question_sets(oracle_server, tmp_path):
    pa, pb = write_sides(tmp_path, [(8, 5), (5, 5), (6, 9), (2, 3)], sets=("vicuna",))
    rows = pb.read_text().splitlines()
    pb.write_text("\n".join(rows[:2]) + "\n")
    with pytest.raises(InputError) as e:
        run_judge(oracle_server, tmp_path, pa, pb)
    assert "B lacks 2 (vicuna/2, vicuna/3)" in str(e.value) and "--allow-partial" in str(e.value)
    assert oracle_server.requests == []
    oracle_server.script(fair_judge)
    res = run_judge(oracle_server, tmp_path, pa, pb, allow_partial=True)
    assert res["overall"]["n"] == 2 and res["missing"]["only_a"] == ["vicuna/2", "vicuna/3"]


def test_empty_output_and_changed_question_are_input_errors(oracle_server, tmp_path):
    pa, pb = write_sides(tmp_path, [(8, 5), (5, 5)])
    rows = [json.loads(x) for x in pb.read_text().splitlines()]
    rows[1]["output"] = "  "
    pb.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as e:
        run_judge(oracle_server, tmp_path, pa, pb)
    assert e.value.line == 2 and e.value.field == "output"
    rows[1]["output"], rows[1]["instruction"] = "ok", "Another question?"
    pb.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="not generated from the same test set"):
        run_judge(oracle_server, tmp_path, pa, pb)


def test_cli_judge_prints_table_and_matches_by_text_for_alpaca_eval_files(oracle_server,
                                                                        tmp_path, capsys):
    qualities = [(8, 5), (5, 5), (6, 9)]
    pa, pb = write_sides(tmp_path, qualities, sets=("koala",))
    # side B as an AlpacaEval export (no ids): matched by question text
    b = [json.loads(x) for x in pb.read_text().splitlines()]
    pb_alpaca = tmp_path / "alpaca_eval.json"
    pb_alpaca.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"],
                                      "generator": "alpaca", "dataset": "koala"} for r in b]))
    oracle_server.script(fair_judge)
    code = main(["judge", str(pa), "--vs", str(pb_alpaca), "--judge", oracle_server.url,
                 "--model", "j", "--run-dir", str(tmp_path / "run"), "-o",
                 str(tmp_path / "out"), "--no-progress", "--resamples", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"koala\s+1\s+1\s+1\s+0\s+1\.000", out), out
    assert_chart(tmp_path / "out" / "wtl.png")


def test_kill_9_mid_judging_then_resume(oracle_server, tmp_path):
    qualities = [(i % 7 + 1, (i * 3) % 7 + 1) for i in range(40)]
    pa, pb = write_sides(tmp_path, qualities)
    oracle_server.script(fair_judge)
    oracle_server.latency = lambda: 0.02
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rtune", "judge", str(pa), "--vs", str(pb), "--judge",
           oracle_server.url, "--model", "j", "--run-dir", str(run_dir), "-o",
           str(tmp_path / "out"), "--concurrency", "4", "--no-progress", "--resamples", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(oracle_server.completed) < 25 and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(run_dir / "rtune.sqlite")
    committed = {k for (k,) in db.execute("SELECT key FROM calls")}
    db.close()
    assert 0 < len(committed) < 80
    before = len(oracle_server.requests)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rerun_keys = {request_key(b) for b in oracle_server.requests[before:]}
    assert not committed & rerun_keys
    assert len(committed | rerun_keys) == 80
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {k: res["overall"][k] for k in ("win", "tie", "loss")} == expected(qualities)
    assert res["calls"]["calls"] == 80


# ---------------------------------------------------------------- saved reviews


def test_import_reviews_rescores_and_reports_disagreements(tmp_path):
    def item(i, review, review_reverse, scores, scores_reverse):
        return {"question": f"Q{i}?", "Answer1": f"a{i}", "Answer2": f"b{i}",
                "review": review, "review_reverse": review_reverse,
                "scores": scores, "scores_reverse": scores_reverse}

    data = [
        item(0, "8 6\nAssistant 1 is better.", "6 8\nAssistant 2 is better.",
             "[8.0, 6.0]", "[6.0, 8.0]"),                                   # win
        item(1, "7 7\nEqual.", "8 7\nThe first is better.", "[7.0, 7.0]", "[8.0, 7.0]"),  # loss
        item(2, "Assistant 1: 9\nAssistant 2: 5\nReasons.", "5 9\nReasons.",
             "[-1, -1]", "[5.0, 9.0]"),  # their parser failed, ours reads it: win, disagreement
        item(3, "I like both.", "6 6\nSame.", "[-1, -1]", "[6.0, 6.0]"),  # failure for both
    ]
    path = tmp_path / "vicuna_recycled_vs_alpaca_reviews_gpt4.json"
    path.write_text(json.dumps({"Meta_Info": {"dataset_name": "vicuna",
                                              "model_name1": "recycled",
                                              "model_name2": "alpaca"}, "data": data}))
    res = import_reviews([path], out_dir=tmp_path / "out", resamples=100)
    o = res["overall"]
    assert (o["win"], o["tie"], o["loss"], o["failed"]) == (2, 0, 1, 1)
    assert res["a"] == "recycled" and res["b"] == "alpaca"
    assert [(d["key"], d["field"]) for d in res["disagreements"]] == [("vicuna/2", "review")]
    stored = res["stored_scores"]["overall"]
    assert (stored["win"], stored["loss"], stored["failed"]) == (1, 1, 2)
    assert_chart(tmp_path / "out" / "wtl.png")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Meta_Info": {}, "data": [{"review": "8 7"}]}))
    with pytest.raises(InputError) as e:
        import_reviews([bad])
    assert e.value.field == "review_reverse" and e.value.record == 0


# ---------------------------------------------------------------- generate -> judge


def test_generate_both_sides_then_judge_on_the_real_vicuna_set(oracle_server, shared_data,
                                                               tmp_path, capsys):
    """The user's flow: `rtune generate` for two served models on the real Vicuna questions,
    then `rtune judge` on the two answer files; the judge prefers the longer answer."""
    vicuna = shared_data / "vicuna_test_set.jsonl"
    n = sum(1 for line in vicuna.read_text().splitlines() if line.strip())

    def serve(body):
        user = body["messages"][-1]["content"]
        if "[The Start of Assistant 1's Answer]" in user:  # judging
            answers = dict(ANSWER.findall(user))
            return f"{len(answers['1'].split())} {len(answers['2'].split())}\nLength."
        words = 6 if body["model"] == "big" else 3
        # every 8th question both models answer alike: a tie
        if int(hashlib.sha1(user.encode()).hexdigest(), 16) % 8 == 0:
            words = 4
        return " ".join(["word"] * words)

    oracle_server.script(serve)
    for model in ("big", "small"):
        assert main(["generate", oracle_server.url, "--model", model, "--test-set", str(vicuna),
                     "-o", str(tmp_path / f"{model}.vicuna.jsonl"), "--run-dir",
                     str(tmp_path / f"gen-{model}"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["judge", str(tmp_path / "big.vicuna.jsonl"), "--vs",
                 str(tmp_path / "small.vicuna.jsonl"), "--judge", oracle_server.url, "--model",
                 "judge", "--run-dir", str(tmp_path / "judge"), "-o", str(tmp_path / "res"),
                 "--no-progress", "--resamples", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ties = sum(int(hashlib.sha1(json.loads(x)["text"].encode()).hexdigest(), 16) % 8 == 0
               for x in vicuna.read_text().splitlines() if x.strip())
    vic = res["test_sets"]["vicuna"]
    assert (vic["win"], vic["tie"], vic["loss"], vic["n"]) == (n - ties, ties, 0, n)
    assert res["a"] == "big" and res["b"] == "small" and 0 < ties < n
    assert vic["score"] == pytest.approx((n - ties) / n + 1)
    # identical answers make both orders the same request: asked (and paid) once
    assert len(oracle_server.requests) == 2 * n + 2 * n - ties


def test_judge_that_never_scores_gives_failures_and_a_chart_saying_so(oracle_server, tmp_path):
    pa, pb = write_sides(tmp_path, [(8, 5), (5, 5)], sets=("koala",))
    oracle_server.script(lambda body: "I'm ready to help. What's your next question?")
    res = run_judge(oracle_server, tmp_path, pa, pb)
    o = res["overall"]
    assert (o["n"], o["failed"], o["score"], o["ci95"]) == (0, 2, None, None)
    assert res["failures"] == {"unparseable": 2} and len(oracle_server.requests) == 8
    assert_chart(tmp_path / "out" / "wtl.png")
