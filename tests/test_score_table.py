"""The run store's typed ``scores`` table: its columns as plain SQLite sees them, the readers
(select, stats), and stores of schema 1 (scores as JSON in ``items``) moved into it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from rtune.errors import ConfigError
from rtune.records import Record
from rtune.score import score_run
from rtune.score_config import ScoreConfig
from rtune.score_table import FIELDS
from rtune.select import select
from rtune.stats import load_input
from rtune.store import STORE_NAME, RunStore

KINDS = ("orig", "ins", "res", "both")
PROVENANCE = {"student": "tiny", "template": "vicuna", "max_length": 2048, "truncated": False,
              "reason": None}
# source 0: IFD(ins) > IFD(orig), r-IFD(both) < r-IFD(ins), both < 1: keep both (case 1);
# source 1: IFD(ins) <= IFD(orig), r-IFD(res) >= r-IFD(orig): drop (case 4)
IFD = {0: {"orig": (0.8, 0.6), "ins": (0.9, 0.7), "res": (0.7, 0.8), "both": (0.6, 0.5)},
       1: {"orig": (0.7, 0.6), "ins": (0.5, 0.4), "res": (0.6, 0.9), "both": (1, 1)}}


def rows() -> list[tuple[tuple[int, str], dict]]:
    return [((i, k), {"ifd_ppl": ifd, "rifd_ppl": rifd, **PROVENANCE})
            for i, kinds in IFD.items() for k, (ifd, rifd) in kinds.items()]


def make_run(run: Path) -> None:
    with RunStore(run) as st:
        for i in IFD:
            orig = Record(f"question {i}", f"answer {i}", source_index=i)
            for k in KINDS:
                st.put_candidate(orig if k == "orig" else orig.derive(k, output=f"{k} {i}"))


def check_readers(run: Path) -> None:
    sel = select(run, "selective")
    assert {i: (d.case, d.kept) for i, d in sel.decisions.items()} == {0: ("1", "both"),
                                                                      1: ("4", None)}
    assert sel.kept_records()[0].extra["ifd_ppl"] == 0.6
    inp = load_input(run)
    assert inp.run is not None and inp.run.scores[1, "both"]["ifd_ppl"] == 1.0
    groups = {g.name: g for g in inp.groups}
    assert [s["rifd_ppl"] for s in groups["ins"].scores] == [0.7, 0.4]
    assert [r.kind for r in groups["selected"].records] == ["both"]


def test_the_columns_are_typed_and_the_readers_use_them(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    with RunStore(run) as st:
        st.put_scores(rows())
    db = sqlite3.connect(run / STORE_NAME)
    declared = {r[1]: r[2] for r in db.execute("PRAGMA table_info(scores)")}
    assert declared["ifd_ppl"] == declared["loss_Q_direct"] == "REAL"
    assert declared["idx"] == declared["max_length"] == declared["truncated"] == "INTEGER"
    assert declared["kind"] == declared["student"] == declared["score_settings"] == "TEXT"
    assert db.execute(  # the integer 1 given for source 1's both is stored as a real
        "SELECT DISTINCT typeof(idx), typeof(ifd_ppl), typeof(rifd_ppl), typeof(truncated), "
        "typeof(max_length), typeof(ppl_A_direct) FROM scores").fetchall() == [
        ("integer", "real", "real", "integer", "integer", "null")]
    assert db.execute("SELECT COUNT(*) FROM scores").fetchone() == (8,)
    assert db.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)
    db.close()
    check_readers(run)


@pytest.mark.parametrize("version", [0, 1])
def test_a_store_of_schema_1_is_moved_into_the_table(tmp_path, version):
    """Version 0: made before the store was marked; 1: scores as JSON in items."""
    run = tmp_path / "run"
    make_run(run)
    db = sqlite3.connect(run / STORE_NAME)
    db.execute("DROP TABLE scores")
    db.executemany("INSERT INTO items VALUES ('scores', ?, ?)",
                   [(f"{i}:{k}", json.dumps(row)) for (i, k), row in rows()])
    db.execute("INSERT INTO items VALUES ('selection', '0', '{}')")
    db.execute(f"PRAGMA user_version = {version}")
    if version == 0:
        db.execute("PRAGMA application_id = 0")
    db.commit()
    db.close()
    with RunStore(run, create=False) as st:  # a reader migrates it too
        assert st.scores() == {k: {**dict.fromkeys(FIELDS), **row} for k, row in rows()}
        assert st.db.execute("PRAGMA user_version").fetchone() == (2,)
        assert st.db.execute("SELECT ns FROM items").fetchall() == [("selection",)]
        assert st.db.execute("SELECT DISTINCT typeof(ifd_ppl), typeof(truncated) "
                             "FROM scores").fetchall() == [("real", "integer")]
    check_readers(run)
    # resume: rows stored before the settings were recorded count as the default settings
    assert score_run(run, ScoreConfig(student="tiny"))["scored_now"] == 0
    with pytest.raises(ConfigError, match="input_join '\\\\n\\\\n' -> ''"):
        score_run(run, ScoreConfig(student="tiny", input_join=""))
