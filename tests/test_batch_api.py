"""--mode batch against a loopback OpenAI Files + Batches server: rounds, faults, kill -9."""

import json
import os
import signal
import subprocess
import sys

import pytest

from batch_server import BatchServer
from record_files import alpaca_jsonl
from rtune.cli import main
from rtune.recycle_batch import recycle_batch
from rtune.recycle_config import RecycleConfig
from rtune.recycle_rounds import BatchOptions
from rtune.status import run_status
from rtune.store import RunStore


@pytest.fixture
def server():
    with BatchServer() as s:
        yield s


def dataset(tmp_path, n=5):
    return alpaca_jsonl(tmp_path, n)


def config(server, **kw):
    return RecycleConfig(**{"oracle": server.url, "model": "gpt-4o-mini", "mode": "batch",
                            "progress": False, **kw})


def options(**kw):
    return BatchOptions(**{"wait": True, "poll_interval": 0.01, **kw})


def cli(server, tmp_path, *extra):
    return ["recycle", str(tmp_path / "data.jsonl"), "--run-dir", str(tmp_path / "run"),
            "--oracle", server.url, "--model", "gpt-4o-mini", "--mode", "batch",
            "--no-progress", "--poll-interval", "0.01", *extra]


def kinds(run_dir):
    with RunStore(run_dir, create=False) as store:
        return {k: sum(v.values()) for k, v in store.candidate_counts().items()}


def assert_each_line_sent_once(server, run_dir, n):
    sent = server.submitted_ids()
    assert len(sent) == len(set(sent))
    assert kinds(run_dir) == {"orig": n, "ins": n, "res": n, "both": n}
    with RunStore(run_dir, create=False) as store:
        assert store.call_totals()["calls"] == 3 * n == len(set(sent))


def test_wait_runs_the_rounds_to_the_end_within_the_line_limit(server, tmp_path):
    s = recycle_batch(dataset(tmp_path), tmp_path / "run", config(server),
                      options(max_lines=4), output=tmp_path / "out.jsonl")
    assert s.done and not s.failed and not s.notes
    # round 1: 10 requests in batches of 4; round 2: 5 both
    assert len(s.submitted) == len(s.collected) == 5
    assert_each_line_sent_once(server, tmp_path / "run", 5)
    assert all(b["metadata"]["rtune_batch"] for b in server.batches.values())
    status = run_status(tmp_path / "run")
    assert [b["state"] for b in status["batches"]] == ["collected"] * 5
    assert {b["api_id"] for b in status["batches"]} == set(server.batches)
    assert status["batches"][0]["counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert all(b["expected_cost"] > 0 for b in status["batches"])
    with RunStore(tmp_path / "run") as store:  # billed at batch prices
        row = store.db.execute("SELECT tokens_in, tokens_out, cost FROM calls").fetchone()
    assert row[2] == pytest.approx((row[0] * 0.15 + row[1] * 0.60) / 1e6 / 2)
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"orig", "ins", "res", "both"}


def test_without_wait_each_command_steps_on_until_done(server, tmp_path, capsys):
    dataset(tmp_path, n=3)
    assert main(cli(server, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "submitted 1 batch(es)" in out and "1 batch(es) running" in out
    assert "run the same command later" in out
    steps = 1
    while "every round is done" not in out:
        assert main(cli(server, tmp_path)) == 0
        out = capsys.readouterr().out
        steps += 1
        assert steps < 12
    # submit round 1; 3 polls to completed, the third collects it and submits round 2; 3 more
    assert steps == 7
    assert_each_line_sent_once(server, tmp_path / "run", 3)
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "batch requests, through the Batch API: done 9" in out
    assert "collected (completed)  6 lines 6/6 done, 0 failed  expected $" in out


def test_a_batch_that_fails_validation_goes_again_then_fails_with_its_reason(server,
                                                                             tmp_path, capsys):
    server.fail_validation = lambda lines: "Invalid model gpt-4o-mini for batch"
    dataset(tmp_path, n=2)
    assert main(cli(server, tmp_path, "--wait", "--batch-retries", "1")) == 1
    out = capsys.readouterr().out
    assert "failed: 4 stage call(s), by reason: batch_failed 4" in out
    assert len(server.batches) == 2  # the first try and one resubmission
    status = run_status(tmp_path / "run")
    assert status["batch"]["reasons"] == {"failed": {"batch_failed": 4}}
    assert status["failures"]["standing"] == {"batch_failed": 4}
    assert "Invalid model" in status["batches"][0]["reason"]
    main(["status", str(tmp_path / "run")])
    assert "failed (a rerun with --fallback-online runs them online): batch_failed 4" in \
        capsys.readouterr().out
    # the same command with --fallback-online: the failed lines run online, then round 2
    server.fail_validation = lambda lines: None
    assert main(cli(server, tmp_path, "--wait", "--fallback-online")) == 0
    assert len(server.online) == 4
    assert kinds(tmp_path / "run") == {"orig": 2, "ins": 2, "res": 2, "both": 2}
    status = run_status(tmp_path / "run")
    assert status["batch"]["answered_by"] == {"online": 4, "batch": 2}
    assert status["failures"]["standing"] == {} and status["failures"]["repaired"]


def test_line_errors_and_retrieve_errors(server, tmp_path):
    def line_error(body):
        user = body["messages"][-1]["content"]
        if "Task 1\n" in user and "[Better Answer]" in user and len(server.batches) == 1:
            return 500, "server_error", "The server had an error"
        if "Task 2\n" in user and "[Better Answer]" in user and "harder" not in user:
            return 400, "invalid_value", "Invalid 'messages[1].content'"
        return None

    server.line_error = line_error
    server.retrieve_errors = 4  # more 500s in a row than the SDK's retries
    s = recycle_batch(dataset(tmp_path, n=4), tmp_path / "run", config(server), options())
    assert any("could not be polled" in n and "HTTP 500" in n for n in s.notes)
    assert s.done and s.failed == 1
    # round 1: 8; then the line that met a 500 again, with round 2 (4 both); the 400 never
    assert len(server.submitted_ids()) == 8 + 1 + 4
    status = run_status(tmp_path / "run")
    assert status["batch"]["reasons"] == {"repaired": {"http_500": 1},
                                          "failed": {"bad_request": 1}}
    assert status["failures"]["standing"] == {"bad_request": 1}
    assert kinds(tmp_path / "run") == {"orig": 4, "ins": 4, "res": 3, "both": 4}


def test_an_expired_batch_keeps_what_finished_and_sends_the_rest_again(server, tmp_path):
    server.expire = lambda batch: batch["id"] == server.order[0]
    server.expire_done = 3  # the first batch expires with 3 of its 8 lines answered
    s = recycle_batch(dataset(tmp_path, n=4), tmp_path / "run", config(server), options())
    assert s.done and not s.failed
    assert server.batches[server.order[0]]["status"] == "expired"
    assert len(server.submitted_ids()) == 8 + 5 + 4  # the 5 unanswered once more, 4 both
    status = run_status(tmp_path / "run")
    assert status["batch"]["reasons"] == {"repaired": {"expired": 5}}
    assert status["batches"][0]["api_status"] == "expired"
    assert kinds(tmp_path / "run") == {"orig": 4, "ins": 4, "res": 4, "both": 4}


def test_a_batch_the_api_no_longer_knows_goes_again(server, tmp_path, capsys):
    dataset(tmp_path, n=2)
    assert main(cli(server, tmp_path)) == 0
    (lost,) = server.batches
    server.forget.add(lost)
    capsys.readouterr()
    assert main(cli(server, tmp_path, "--wait")) == 0
    out = capsys.readouterr().out
    assert f"batch {lost}: the API no longer knows it; its 4 request(s) go out again" in out
    assert kinds(tmp_path / "run") == {"orig": 2, "ins": 2, "res": 2, "both": 2}
    status = run_status(tmp_path / "run")
    assert status["batches"][0]["state"] == "gone"
    assert status["batch"]["reasons"] == {"repaired": {"batch_lost": 4}}


@pytest.mark.parametrize("hold", ["upload", "create", "retrieve", "content"])
def test_kill_9_while_submitting_polling_or_downloading_then_rerun(server, tmp_path, hold):
    """The server does the work of the held request, then the client dies before it hears
    the answer; the rerun adopts what the server made and sends no line twice."""
    dataset(tmp_path, n=4)
    cmd = [sys.executable, "-m", "rtune", *cli(server, tmp_path, "--wait")]
    server.hold(hold)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert server.held.wait(60), proc.communicate(timeout=5)[0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        server.release.set()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_each_line_sent_once(server, tmp_path / "run", 4)
    uploads = [f for f in server.files.values() if f["purpose"] == "batch"]
    assert len(uploads) == len(server.batches) == 2  # nothing uploaded twice either


def test_dry_run_prices_the_batch_mode_at_half(tmp_path, capsys):
    src = dataset(tmp_path, n=20)
    base = ["recycle", str(src), "--oracle", "https://api.openai.com/v1", "--model",
            "gpt-4o-mini", "--dry-run", "--run-dir", str(tmp_path / "run")]
    assert main([*base, "--mode", "batch"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["cost"] > 0
    assert total["cost_batch"] == pytest.approx(total["cost"] / 2)
    assert total["cost_mode"] == total["cost_batch"]
    assert not (tmp_path / "run").exists()


def test_batch_mode_needs_an_endpoint(tmp_path, capsys):
    src = dataset(tmp_path)
    assert main(["recycle", str(src), "--mode", "batch", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--mode batch sends the requests to an OpenAI Batch API" in capsys.readouterr().err


def recipe_with(server, tmp_path, mode):
    from rtune.recipe import load_recipe

    tmp_path.mkdir(exist_ok=True)
    dataset(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"instruction": "Name a colour."}\n')
    path = tmp_path / "r.yaml"
    path.write_text(f"data: data.jsonl\nmodels:\n  oracle: {{spec: '{server.url}', model: "
                    "gpt-4o-mini}\n  base_model: /nowhere/llama\narms: {original: original, "
                    f"selected: selected}}\ntest_sets: [q.jsonl]\nrecycle: {{mode: {mode}}}\n")
    return load_recipe(path, out=tmp_path / "exp", missing_ok=True)


def test_an_experiment_recycles_in_batch_mode_a_step_each_run(server, tmp_path):
    from rtune.errors import ConfigError
    from rtune.experiment import Experiment, StepIncomplete
    from rtune.experiment_steps import run_recycle

    exp = Experiment(recipe_with(server, tmp_path, "batch"))
    step = next(s for s in exp.steps() if s.kind == "recycle")
    unfinished = 0
    while True:  # each run collects what finished and sends the next round
        try:
            result = run_recycle(exp, step, fresh=False, echo=lambda m: None)
            break
        except StepIncomplete as e:
            assert "running at the Batch API" in str(e)
            unfinished += 1
            assert unfinished < 40
    assert unfinished >= 2  # two rounds: instruction and response, then both
    assert result["summary"]["records"] == 5 and result["summary"]["calls"]["calls"] == 15
    assert_each_line_sent_once(server, exp.run_dir, 5)
    # redone (its settings changed): the candidates again from the stored calls, nothing sent
    again = run_recycle(exp, step, fresh=True, echo=lambda m: None)
    assert again["summary"]["candidates"] == result["summary"]["candidates"]
    assert_each_line_sent_once(server, exp.run_dir, 5)
    exp = Experiment(recipe_with(server, tmp_path / "x", "export"))
    with pytest.raises(ConfigError, match="run outside the experiment"):
        run_recycle(exp, exp.steps()[0], fresh=False, echo=lambda m: None)
