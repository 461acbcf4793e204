"""A recycle run against the loopback server: text UTF-8 cannot encode, a run folder that
knows its input, and nothing on disk before the input and options are checked."""

import json
import os
import stat

import pytest

from oracle_server import default_reply
from rtune.cli import main
from rtune.errors import ConfigError
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.store import RunStore


def config(server, **kw):
    return RecycleConfig(**{"oracle": server.url, "model": "m", "progress": False,
                            "concurrency": 4, **kw})


def dataset(tmp_path, n=3, name="data.jsonl", text="Task"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"instruction": f"{text} {i}", "output": f"Answer {i}"})
                            + "\n" for i in range(n)))
    return path


def recycle_cli(server, *args):
    return main(["recycle", *map(str, args), "--oracle", server.url, "--model", "m",
                 "--no-progress"])


# ---------------------------------------------------------------- text UTF-8 cannot encode


def test_a_reply_with_a_lone_surrogate_is_repaired_noted_and_kept(oracle_server, tmp_path):
    def reply(body):  # the server's JSON carries the escape \ud800
        return default_reply(body).replace("better answer", "better \ud800 answer")

    oracle_server.script(reply)
    src, run = dataset(tmp_path), tmp_path / "run"
    s = recycle(src, run, config(oracle_server, stages=("response",)))
    assert s.candidates["res"] == {"ok": 3}
    with RunStore(run) as store:
        res = list(store.candidates("res"))
    assert all("better \ufffd answer" in r.output for r in res)
    assert all("reply: 1 characters UTF-8 cannot encode" in r.fallback_reason for r in res)
    n = len(oracle_server.requests)
    again = recycle(src, run, config(oracle_server, stages=("response",)))
    assert len(oracle_server.requests) == n and again.calls["calls"] == 3  # the paid replies kept


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_an_input_with_a_lone_surrogate_is_repaired_the_same_in_json_and_jsonl(
        oracle_server, tmp_path, name):
    row = '{"instruction": "Fix \\ud800 this", "output": "Done \\udc00"}'
    src = tmp_path / name
    src.write_text(f"[{row}]" if name.endswith(".json") else row + "\n")
    run = tmp_path / "run"
    recycle(src, run, config(oracle_server, stages=("response",)))
    with RunStore(run) as store:
        orig = next(store.candidates("orig"))
        res = next(store.candidates("res"))
    assert (orig.instruction, orig.output) == ("Fix \ufffd this", "Done \ufffd")
    assert orig.extra["repaired"].startswith("instruction, output: characters UTF-8 cannot")
    assert res.instruction == "Fix \ufffd this"
    assert "Fix \ufffd this" in oracle_server.requests[0]["messages"][-1]["content"]


# ---------------------------------------------------------------- a run knows its input


def test_another_input_into_the_same_folder_is_refused_unless_force_new(oracle_server,
                                                                         tmp_path, capsys):
    a = dataset(tmp_path, name="a.jsonl", text="Alpha")
    b = dataset(tmp_path, name="b.jsonl", text="Beta")
    run = tmp_path / "run"
    assert recycle_cli(oracle_server, a, "--run-dir", run) == 0
    n = len(oracle_server.requests)
    capsys.readouterr()
    assert recycle_cli(oracle_server, b, "--run-dir", run) == 2
    err = capsys.readouterr().err.strip()
    assert str(a.resolve()) in err and str(b.resolve()) in err and "--force-new" in err
    assert len(err.splitlines()) == 1 and len(oracle_server.requests) == n
    assert recycle_cli(oracle_server, b, "--run-dir", run, "--force-new") == 0
    rows = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    assert {r["instruction"].split()[0] for r in rows if r["kind"] == "orig"} == {"Beta"}
    with RunStore(run) as store:
        assert store.get_meta("identity")["input"]["path"] == str(b.resolve())


def test_an_input_changed_in_place_or_other_settings_are_refused(oracle_server, tmp_path):
    src, run = dataset(tmp_path), tmp_path / "run"
    recycle(src, run, config(oracle_server))
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(src.read_bytes())
    recycle(moved, run, config(oracle_server))  # the same content elsewhere: the same input
    with pytest.raises(ConfigError, match="other settings.*temperature 0.0 -> 0.7"):
        recycle(moved, run, config(oracle_server, temperature=0.7))
    with open(moved, "a") as f:
        f.write(json.dumps({"instruction": "Task 9", "output": "Answer 9"}) + "\n")
    with pytest.raises(ConfigError, match="has changed since"):
        recycle(moved, run, config(oracle_server))
    with RunStore(run) as store:  # no candidates: nothing to mix, the cached calls still serve
        store.db.execute("DELETE FROM candidates")
    n = len(oracle_server.requests)
    s = recycle(moved, run, config(oracle_server))
    assert s.candidates["orig"] == {"ok": 4} and len(oracle_server.requests) == n + 3


def test_a_run_made_before_fingerprints_still_refuses_another_input(oracle_server, tmp_path):
    a, b, run = dataset(tmp_path, name="a.jsonl"), dataset(tmp_path, name="b.jsonl"), \
        tmp_path / "run"
    recycle(a, run, config(oracle_server))
    with RunStore(run) as store:
        store.db.execute("DELETE FROM meta WHERE key = 'identity'")
    with pytest.raises(ConfigError, match="a.jsonl, not of .*b.jsonl"):
        recycle(b, run, config(oracle_server))
    recycle(a, run, config(oracle_server))


# ---------------------------------------------------------------- nothing before validation


@pytest.mark.parametrize("case", ["bad record", "single object", "bad prompts", "bad prices"])
def test_a_refused_command_leaves_nothing_on_disk(oracle_server, tmp_path, case):
    src, extra = dataset(tmp_path), []
    if case == "bad record":
        src.write_text('{"instruction": "no output"}\n')
    elif case == "single object":
        src = tmp_path / "one.json"
        src.write_text('{"instruction": "a", "output": "b"}\n')
    elif case == "bad prompts":
        extra = ["--prompts", tmp_path / "missing"]
    else:
        (tmp_path / "prices.json").write_text("[1, 2]")
        extra = ["--prices", tmp_path / "prices.json"]
    run = tmp_path / "run"
    assert recycle_cli(oracle_server, src, "--run-dir", run, *extra) == 2
    assert not run.exists() and oracle_server.requests == []


def test_outputs_get_the_usual_permissions(oracle_server, tmp_path):
    old = os.umask(0o027)
    try:
        recycle(dataset(tmp_path), tmp_path / "run", config(oracle_server),
                output=tmp_path / "out.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o640
