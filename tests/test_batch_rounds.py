"""--mode export / import: batch-format request files, result files as vLLM's batch runner
writes them (built by hand from its line format), rounds, and bad result files."""

import json
import sqlite3
import uuid

import pytest

from oracle_server import completion, default_reply, request_key
from rtune.cli import main
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.recycle_rounds import BatchOptions, RoundsRun, export_round, import_round
from rtune.store import RunStore

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def dataset(tmp_path, n=6, name="data.jsonl"):
    rows = [{"instruction": f"Task {i}", "input": "some input" if i % 3 == 0 else "",
             "output": f"Answer {i}"} for i in range(n)]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def reask_reply(body):
    """Markers as rtune asks, except Task 1's response reflection, which needs a re-ask."""
    user = body["messages"][-1]["content"]
    if "Your reply is missing" in user:
        return "Here: [Better Answer] fixed on re-ask [End]"
    if "[Better Answer]" in user and "Task 1\n" in user and "harder" not in user:
        return "I think the answer is fine."
    return default_reply(body)


def run_vllm(request_file, result_file, reply=default_reply, error=lambda body: None):
    """What ``vllm run_batch -i request_file -o result_file`` writes: one compact
    BatchRequestOutput line per request, in input order."""
    with open(result_file, "w") as out:
        for line in open(request_file):
            req = json.loads(line)
            problem = error(req["body"])
            if problem:
                status, message = problem
                row = {"id": f"vllm-{uuid.uuid4().hex}", "custom_id": req["custom_id"],
                       "response": {"status_code": status,
                                    "request_id": f"vllm-batch-{uuid.uuid4().hex}",
                                    "body": None},
                       "error": message}
            else:
                body = completion(req["body"], reply(req["body"]))
                body["choices"][0]["message"].update(tool_calls=[], reasoning_content=None)
                body["choices"][0]["stop_reason"] = None
                body.update(prompt_logprobs=None, kv_transfer_params=None)
                row = {"id": f"vllm-{uuid.uuid4().hex}", "custom_id": req["custom_id"],
                       "response": {"status_code": 200,
                                    "request_id": f"vllm-batch-{uuid.uuid4().hex}",
                                    "body": body},
                       "error": None}
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def run_round(export, out_dir, **kw):
    """Run every file of an export round through the fake vLLM runner; the result files."""
    results = []
    for path, _ in export.files:
        dest = out_dir / export.round / path.rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        run_vllm(path, dest, **kw)
        results.append(dest)
    return results


def config(**kw):
    return RecycleConfig(**{"model": MODEL, "mode": "export", "progress": False, **kw})


def candidates(run_dir):
    with RunStore(run_dir, create=False) as store:
        return {(r.source_index, r.kind): (r.instruction, r.output, r.raw, r.parse_status,
                                           r.fallback_reason) for r in store.candidates()}


def table(run_dir, name):
    db = sqlite3.connect(run_dir / "rtune.sqlite")
    try:
        return db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
    finally:
        db.close()


def test_rounds_make_the_candidates_the_online_path_makes(oracle_server, tmp_path):
    oracle_server.script(reask_reply)
    online = RecycleConfig(oracle=oracle_server.url, model=MODEL, progress=False)
    recycle(dataset(tmp_path), tmp_path / "online", online)
    src = dataset(tmp_path, name="copy.jsonl")
    opts = BatchOptions(requests_dir=str(tmp_path / "req"), shards=2)
    s = export_round(src, tmp_path / "run", config(), opts)
    rounds = []
    while s.export.round is not None:
        rounds.append((s.export.round, s.export.lines))
        results = run_round(s.export, tmp_path / "out", reply=reask_reply)
        s = import_round(src, tmp_path / "run", config(), results, opts)
        assert all(r.imported == r.lines for r in s.imports)
    # round 1: ins + res of 6 records; round 2: both + the re-ask; then nothing
    assert rounds == [("round-1", 12), ("round-2", 7)]
    assert candidates(tmp_path / "run") == candidates(tmp_path / "online")
    lines = [json.loads(line) for f in (tmp_path / "req").rglob("0*.jsonl") for line in open(f)]
    posted = {request_key(b): b for b in oracle_server.requests}
    assert {r["custom_id"] for r in lines} == set(posted)  # the same requests, and each line's
    assert all(r["body"] == posted[r["custom_id"]] for r in lines)  # body is what HTTP posts
    assert json.loads((tmp_path / "req/round-1/manifest.json").read_text())["model"] == MODEL


def test_import_twice_changes_nothing_and_another_runs_file_is_refused(tmp_path, capsys):
    src = dataset(tmp_path)
    opts = BatchOptions(requests_dir=str(tmp_path / "req"))
    s = export_round(src, tmp_path / "run", config(), opts)
    results = run_round(s.export, tmp_path / "out")
    import_round(src, tmp_path / "run", config(), results, opts)
    before = [table(tmp_path / "run", t) for t in ("calls", "candidates", "batch_requests")]
    again = import_round(src, tmp_path / "run", config(), results, opts)
    assert [(r.imported, r.already) for r in again.imports] == [(0, 12)]
    assert again.export.round is None  # round 2 was written by the first import
    after = [table(tmp_path / "run", t) for t in ("calls", "candidates", "batch_requests")]
    assert after == before
    # a result file made for another model (so other request keys) into this run
    other = export_round(dataset(tmp_path, name="b.jsonl"), tmp_path / "other",
                         config(model="other-model"),
                         BatchOptions(requests_dir=str(tmp_path / "req-b")))
    foreign = run_round(other.export, tmp_path / "out-b")
    code = main(["recycle", str(src), "--run-dir", str(tmp_path / "run"), "--model", MODEL,
                 "--no-progress", "--mode", "import", *map(str, foreign)])
    out = capsys.readouterr().out
    assert code == 1
    assert "none of its 12 results were made by this run" in out
    assert f"{foreign[0]}:1: custom_id" in out and "more such line" in out
    assert [table(tmp_path / "run", t) for t in ("calls", "candidates")] == after[:2]


def test_unreadable_lines_are_named_by_file_and_line_and_the_rest_goes_on(tmp_path, capsys):
    src = dataset(tmp_path, n=3)
    opts = BatchOptions(requests_dir=str(tmp_path / "req"))
    s = export_round(src, tmp_path / "run", config(), opts)
    (result,) = run_round(s.export, tmp_path / "out")
    lines = result.read_text().splitlines()
    no_key = json.loads(lines[1])
    del no_key["custom_id"]
    lines[1] = json.dumps(no_key)
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # the runner died while writing it
    result.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]))
    code = main(["recycle", str(src), "--run-dir", str(tmp_path / "run"), "--model", MODEL,
                 "--no-progress", "--mode", "import", str(result)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{result}:2: no custom_id" in out
    assert f"{result}:{len(lines) + 1}: not a JSON line (cut short or damaged)" in out
    assert "4 result(s)" in out and "2 unreadable" in out
    with RunStore(tmp_path / "run") as store:
        assert store.call_totals()["calls"] == 4
    # the two lines without a result are still out (and round 2, written by the import):
    # --reexport writes every request still out again
    out_before = table(tmp_path / "run", "batch_requests")
    still_out = sum(1 for row in out_before if row[3] == "out")
    s = export_round(src, tmp_path / "run", config(), BatchOptions(reexport=True))
    assert s.export.round == "round-3" and s.export.lines == still_out >= 2


def test_error_lines_go_out_again_and_context_errors_cut_the_answer(tmp_path):
    src = dataset(tmp_path, n=3)
    opts = BatchOptions(requests_dir=str(tmp_path / "req"))
    s = export_round(src, tmp_path / "run", config(), opts)

    def error(body):
        user = body["messages"][-1]["content"]
        if "Task 0\n" in user and "[Better Answer]" in user:
            return 500, "engine crashed"
        if "Task 2\n" in user and "[Better Answer]" in user and "Answer 2" in user:
            return 400, "This model's maximum context length is 4096 tokens."
        return None

    results = run_round(s.export, tmp_path / "out", error=error)
    s = import_round(src, tmp_path / "run", config(), results, opts)
    results = [r.rename(r.with_name("first-" + r.name)) for r in results]  # kept aside
    assert s.imports[0].errors == {"http_500": 1, "context_length": 1}
    round2 = [json.loads(line) for f, _ in s.export.files for line in open(f)]
    users = [r["body"]["messages"][-1]["content"] for r in round2]
    assert sum("Task 0\n" in u and "[Better Answer]" in u for u in users) == 1  # again
    cut = [u for u in users if "Task 2\n" in u and "[Better Answer]" in u and "harder" not in u]
    assert len(cut) == 1 and "Answer 2" not in cut[0]  # asked again with the answer cut
    while s.export.round is not None:
        s = import_round(src, tmp_path / "run", config(),
                         run_round(s.export, tmp_path / "out"), opts)
    got = candidates(tmp_path / "run")
    assert {k for k in got if k[1] != "orig"} == {(i, k) for i in range(3)
                                                  for k in ("ins", "res", "both")}
    assert "answer cut in half after a context-length error" in got[(2, "res")][4]
    # the first round's file again, error lines included, after later rounds: no change
    tables = [table(tmp_path / "run", t) for t in ("calls", "batch_requests", "failures")]
    again = import_round(src, tmp_path / "run", config(), results, opts)
    assert again.imports[0].imported == 0 and not again.imports[0].errors
    assert [table(tmp_path / "run", t) for t in ("calls", "batch_requests", "failures")] == tables
    assert main(["status", str(tmp_path / "run")]) == 0


def test_cli_export_import_rounds_and_status(tmp_path, capsys):
    src = dataset(tmp_path, n=5)
    base = ["recycle", str(src), "--run-dir", str(tmp_path / "run"), "--model", MODEL,
            "--no-progress"]
    assert main([*base, "--mode", "export", "--shards", "3", "--requests-dir",
                 str(tmp_path / "req")]) == 0
    out = capsys.readouterr().out
    assert "round-1: 10 request(s) in 3 file(s)" in out
    for n in (1, 2):
        files = sorted((tmp_path / "req" / f"round-{n}").glob("*.jsonl"))
        results = []
        for f in files:
            results.append(tmp_path / "out" / f"{n}-{f.name}")
            results[-1].parent.mkdir(exist_ok=True)
            run_vllm(f, results[-1])
        assert main([*base, "--mode", "import", *map(str, results)]) == 0
    out = capsys.readouterr().out
    assert "round-2: 5 request(s)" in out and "every request has its result" in out
    assert "both  ok 5" in out
    main(["status", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "batch requests, through batch files (export/import): done 15" in out
    assert "round 1: instruction 5, response 5" in out and "round 2: both 5" in out
    # the same export again: nothing new, nothing written
    assert main([*base, "--mode", "export"]) == 0
    assert "nothing new to export: every request has its result" in capsys.readouterr().out
    assert not (tmp_path / "req" / "round-3").exists()


def test_file_limits_and_options_are_checked(tmp_path, capsys):
    src = dataset(tmp_path, n=4)
    with RoundsRun(src, tmp_path / "run", config(), BatchOptions(max_lines=3)) as run:
        run.collect()
        e = run.export(tmp_path / "req", shards=1)
    assert [n for _, n in e.files] == [3, 3, 2]
    base = ["recycle", str(src), "--run-dir", str(tmp_path / "run2"), "--no-progress"]
    assert main([*base, "--mode", "export"]) == 2
    assert "--mode export needs --model" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--mode", "import"]) == 2
    assert "needs the result files" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--mode", "export", "x.jsonl"]) == 2
    assert "takes no files" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--mode", "import", "missing.jsonl"]) == 2
    assert "missing.jsonl: no such result file" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--mode", "export", "--shards", "0"]) == 2


@pytest.mark.parametrize("n", [1])
def test_a_result_file_of_an_empty_run_is_refused_in_one_line(tmp_path, capsys, n):
    src = dataset(tmp_path, n=2)
    other = export_round(dataset(tmp_path, name="o.jsonl", n=n), tmp_path / "o",
                         config(model="m2"), BatchOptions(requests_dir=str(tmp_path / "rq")))
    (foreign,) = run_round(other.export, tmp_path / "out")
    code = main(["recycle", str(src), "--run-dir", str(tmp_path / "run"), "--model", MODEL,
                 "--no-progress", "--mode", "import", str(foreign)])
    out = capsys.readouterr().out
    assert code == 1 and out.count("were made by this run") == 1
