"""Selection rules on hand-built score tables, against the authors' selection loop."""

from __future__ import annotations

import json
import random

import pytest

from rtune.cli import main
from rtune.errors import ConfigError
from rtune.records import Record
from rtune.select import decide_selective, select, write_selection
from rtune.store import RunStore

KINDS = ("orig", "ins", "res", "both")


def table(idx: int, **scores: tuple[float | None, float | None]) -> list[dict]:
    """Rows for one source: kind=(IFD, r-IFD) for ppl, and the same /2 for the loss ratios."""
    rows = []
    for kind, (ifd, rifd) in scores.items():
        row = {"source_index": idx, "kind": kind, "ifd_ppl": ifd, "rifd_ppl": rifd,
               "ifd_loss": None if ifd is None else ifd / 2,
               "rifd_loss": None if rifd is None else rifd / 2}
        if ifd is None:
            row["reason"] = "empty answer"
        rows.append(row)
    return rows


def authors_rule(s: dict[str, tuple[float, float]]) -> str | None:
    """The kept kind, written like the authors' selection script (get_select_data.py)."""
    ori_ifd, ori_rifd = s["orig"]
    q_ifd, q_rifd = s["ins"]
    a_ifd, a_rifd = s["res"]
    qa_ifd, qa_rifd = s["both"]
    if q_ifd > ori_ifd:
        if qa_rifd < q_rifd:
            if qa_rifd < 1 and qa_ifd < 1:
                return "both"
    else:
        if a_rifd < ori_rifd:
            if a_rifd < 1 and a_ifd < 1:
                return "res"
    return None


CASES = [
    # (scores, expected kept, expected case, words in the reason)
    (dict(orig=(.5, .6), ins=(.7, .8), res=(.4, .4), both=(.6, .5)), "both", "1",
     ["IFD(ins) 0.7000 > IFD(orig) 0.5000", "r-IFD(both) 0.5000 < r-IFD(ins) 0.8000"]),
    (dict(orig=(.5, .6), ins=(.7, .8), res=(.4, .4), both=(1.2, .5)), None, "1",
     ["IFD(both) 1.2000 >= 1"]),
    (dict(orig=(.5, .6), ins=(.7, .8), res=(.4, .4), both=(.6, 1.0)), None, "2",
     ["r-IFD(both) 1.0000 >= r-IFD(ins) 0.8000"]),
    # tie on r-IFD: not easier to guess -> drop (case 2)
    (dict(orig=(.5, .6), ins=(.7, .8), res=(.4, .4), both=(.6, .8)), None, "2", [">="]),
    (dict(orig=(.5, .6), ins=(.4, .8), res=(.8, .3), both=(.6, .1)), "res", "3",
     ["IFD(ins) 0.4000 <= IFD(orig) 0.5000", "r-IFD(res) 0.3000 < r-IFD(orig) 0.6000"]),
    (dict(orig=(.5, 1.3), ins=(.4, .8), res=(.8, 1.1), both=(.6, .1)), None, "3",
     ["r-IFD(res) 1.1000 >= 1"]),
    (dict(orig=(.5, .6), ins=(.4, .8), res=(.8, .7), both=(.6, .1)), None, "4",
     ["r-IFD(res) 0.7000 >= r-IFD(orig) 0.6000"]),
    # tie on IFD: the reflected instruction is not harder -> the res branch (3/4)
    (dict(orig=(.5, .6), ins=(.5, .8), res=(.8, .3), both=(.6, .1)), "res", "3", ["<="]),
    (dict(orig=(.5, .6), ins=(.5, .8), res=(.8, .6), both=(.6, .1)), None, "4", [">="]),
]


@pytest.mark.parametrize("scores,kept,case,words", CASES)
def test_four_cases(scores, kept, case, words):
    sel = select(table(7, **scores), "selective")
    d = sel.decisions[7]
    assert (d.kept, d.case) == (kept, case)
    assert kept == authors_rule(scores)
    for w in words:
        assert w in d.reason


def test_random_tables_match_the_authors_rule():
    rng = random.Random(4)
    values = [0.4, 0.7, 0.9, 0.99, 1.0, 1.2]  # few values: many ties and threshold hits
    rows, expected = [], {}
    for idx in range(400):
        scores = {k: (rng.choice(values), rng.choice(values)) for k in KINDS}
        rows += table(idx, **scores)
        expected[idx] = authors_rule(scores)
    sel = select(rows, "selective")
    assert {i: d.kept for i, d in sel.decisions.items()} == expected
    counts = sel.counts()
    assert set(counts) == {"1", "2", "3", "4"}
    assert counts["2"]["kept"] == counts["4"]["kept"] == 0
    assert sum(c["kept"] for c in counts.values()) == sum(v is not None for v in
                                                          expected.values())


def test_thresholds_and_loss_metric():
    scores = dict(orig=(.5, .6), ins=(.7, .8), res=(.4, .4), both=(.6, .5))
    assert select(table(0, **scores), ifd_max=0.55).decisions[0].kept is None
    assert select(table(0, **scores), rifd_max=0.5).decisions[0].kept is None
    assert select(table(0, **scores), rifd_max=0.51).decisions[0].kept == "both"
    # loss ratios are the ppl ones / 2 here: with threshold 0.35 only metric=loss keeps it
    assert select(table(0, **scores), metric="loss", ifd_max=.35).decisions[0].kept == "both"
    assert select(table(0, **scores), metric="ppl", ifd_max=.35).decisions[0].kept is None


def test_missing_scores_are_explained():
    d = decide_selective(3, {r["kind"]: r for r in table(
        3, orig=(.5, .6), ins=(None, None), res=(.4, .4), both=(.6, .5))})
    assert (d.kept, d.case) == (None, "missing")
    assert "ifd_ppl of ins" in d.reason and "empty answer" in d.reason
    # only orig scored (a plain dataset): names the absent candidate
    d = decide_selective(4, {"orig": {"ifd_ppl": .5, "rifd_ppl": .5}})
    assert d.case == "missing" and "no such candidate" in d.reason
    # r-IFD missing only on the branch that is not taken: still decided
    d = decide_selective(5, {r["kind"]: r for r in table(
        5, orig=(.5, .6), ins=(.4, .8), res=(.8, .3), both=(.6, None))})
    assert (d.kept, d.case) == ("res", "3")


def test_cherry_top_fraction():
    rows = []
    ifds = [0.2, 0.95, 0.5, 1.3, None, 0.95, 0.7, 0.1, 1.0, 0.6]
    for i, v in enumerate(ifds):
        rows += table(i, orig=(v, 0.5))
    sel = select(rows, "cherry", top=0.3)  # 3 of 10
    kept = [i for i, d in sel.decisions.items() if d.kept]
    assert kept == [1, 5, 6]  # 0.95 tie broken by source order, then 0.7
    assert sel.decisions[3].case == "ifd>=max" and sel.decisions[8].case == "ifd>=max"
    assert sel.decisions[4].case == "missing"
    assert sel.decisions[2].case == "below-top" and "ranks 5/7" in sel.decisions[2].reason
    assert [i for i, d in select(rows, "cherry", top=2).decisions.items() if d.kept] == [1, 5]


def test_errors():
    with pytest.raises(ConfigError, match="policy"):
        select([], "best")
    with pytest.raises(ConfigError, match="top"):
        select([], "cherry", top=0)


def _scored_run(run_dir) -> None:
    with RunStore(run_dir) as store:
        for idx, scores in enumerate(c[0] for c in CASES):
            base = Record(f"question {idx}", f"answer {idx}", source_index=idx,
                          source_id=f"s{idx}")
            for kind in KINDS:
                rec = base if kind == "orig" else base.derive(
                    kind, instruction=f"{kind} question {idx}", output=f"{kind} answer {idx}",
                    oracle_model="gpt-x", prompt_id=f"reflect_{kind}")
                store.put_candidate(rec)
                ifd, rifd = scores[kind]
                store.put_scores([((idx, kind), {"ifd_ppl": ifd, "rifd_ppl": rifd,
                                                  "student": "tiny", "reason": None})])


def test_run_dir_decisions_stored_and_written(tmp_path, capsys):
    run = tmp_path / "run"
    _scored_run(run)
    sel = select(run, "selective")
    with RunStore(run) as store:
        stored = dict(store.items("selection"))
    assert set(stored) == {str(i) for i in range(len(CASES))}
    for i, (_, kept, case, _) in enumerate(CASES):
        assert stored[str(i)]["kept"] == kept and stored[str(i)]["case"] == case
        assert stored[str(i)]["policy"] == "selective" and stored[str(i)]["reason"]
    n = write_selection(sel, tmp_path / "kept.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert n == len(rows) == sum(c[1] is not None for c in CASES)
    assert rows[0]["kind"] == "both" and rows[0]["oracle_model"] == "gpt-x"
    assert rows[0]["extra"]["selection"]["case"] == "1" and "ifd_ppl" in rows[0]["extra"]

    out = tmp_path / "kept.json"
    assert main(["select", str(run), "--policy", "selective", "-o", str(out),
                 "--format", "alpaca"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(CASES)} source records, {n} kept" in printed and "case 4" in printed
    alpaca = json.loads(out.read_text())
    assert alpaca[0] == {"instruction": "both question 0", "input": "",
                         "output": "both answer 0"}
    # V1 use: every source's fully recycled candidate, no scores needed
    assert main(["select", str(run), "--policy", "stage", "--kind", "both", "-o",
                 str(tmp_path / "v1.jsonl")]) == 0
    assert len((tmp_path / "v1.jsonl").read_text().splitlines()) == len(CASES)


def test_selective_on_a_plain_scored_file_explains(tmp_path, capsys):
    path = tmp_path / "scored.jsonl"
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}", "source_index": i,
             "kind": "orig", "ifd_ppl": 0.5 + i / 10, "rifd_ppl": 0.9} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["select", str(path), "--policy", "selective"]) == 0
    out = capsys.readouterr()
    assert "4 source records, 0 kept" in out.out and "--policy cherry" in out.err
    assert main(["select", str(path), "--policy", "cherry", "--top", "2", "-o",
                 str(tmp_path / "c.json"), "--format", "alpaca"]) == 0
    kept = json.loads((tmp_path / "c.json").read_text())
    assert [r["output"] for r in kept] == ["a2", "a3"]  # IFD 0.7 and 0.8: the highest below 1
