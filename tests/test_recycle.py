"""End-to-end recycling against the loopback Chat Completions server."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from oracle_server import Fault, default_reply, request_key
from rtune.errors import ConfigError, InputError
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.store import RunStore

SECRET = "sk-test-SECRET-1234567890"


def dataset(tmp_path, n=6, extra=()):
    rows = [{"instruction": f"Task {i}", "input": "some input" if i % 3 == 0 else "",
             "output": f"Answer {i}"} for i in range(n)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*rows, *extra]) + "\n")
    return path


def config(server, **kw):
    return RecycleConfig(**{"oracle": server.url, "model": "gpt-4o-mini", "progress": False,
                            "concurrency": 4, **kw})


def test_every_stage_makes_candidates_with_provenance(oracle_server, tmp_path):
    src = dataset(tmp_path)
    out = tmp_path / "out.jsonl"
    s = recycle(src, tmp_path / "run", config(oracle_server), output=out)
    assert {k: sum(v.values()) for k, v in s.candidates.items()} == {
        "orig": 6, "ins": 6, "res": 6, "both": 6}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    both = next(r for r in rows if r["kind"] == "both" and r["source_index"] == 1)
    ins = next(r for r in rows if r["kind"] == "ins" and r["source_index"] == 1)
    assert both["instruction"] == ins["instruction"].strip()  # both = res reflection of ins
    assert both["output"].startswith("better answer")
    assert both["prompt_id"] == "reflect_response" and both["prompt_version"] == "1"
    assert both["oracle_model"] == "gpt-4o-mini" and both["parse_status"] == "ok"
    assert "[Better Answer]" in both["raw"]
    assert ins["input"] == "" and ins["instruction"].startswith("harder task")
    # input goes into the instruction reflection prompt of records that have one
    assert any("some input" in r["messages"][-1]["content"] for r in oracle_server.requests)
    assert len(oracle_server.requests) == 18
    # the report/stats side reads the same run: every input record is one source
    from rtune.stats import load_input, run_summary

    summary = run_summary(load_input(tmp_path / "run").run)
    assert summary["sources"] == 6 and summary["oracle"]["calls"] == 18


def test_rerun_pays_nothing_twice(oracle_server, tmp_path):
    src = dataset(tmp_path)
    recycle(src, tmp_path / "run", config(oracle_server))
    n = len(oracle_server.requests)
    s = recycle(src, tmp_path / "run", config(oracle_server))
    assert len(oracle_server.requests) == n and s.calls["calls"] == n


def test_missing_markers_reask_once_then_fall_back(oracle_server, tmp_path):
    def reply(body):
        user = body["messages"][-1]["content"]
        if "Your reply is missing" in user:
            return "Sorry, here it is: [Better Answer] fixed on re-ask [End]" \
                if "Task 1" in body["messages"][-3]["content"] else "still nothing"
        if "[Better Answer]" in user:
            return "I think the answer is fine."
        return default_reply(body)
    oracle_server.script(reply)
    recycle(dataset(tmp_path, n=3), tmp_path / "run",
            config(oracle_server, stages=("response",)))
    with RunStore(tmp_path / "run") as store:
        fixed = store.get_candidate(1, "res")
        assert fixed.output == "fixed on re-ask" and fixed.parse_status == "ok"
        assert "re-asked 1x" in fixed.fallback_reason
        fell = store.get_candidate(2, "res")
        assert fell.output == "Answer 2" and fell.parse_status == "fallback"
        assert "Better Answer: missing, kept the original" in fell.fallback_reason
        assert "--- re-ask ---" in fell.raw


def test_partial_fallback_keeps_the_parsed_field(oracle_server, tmp_path):
    oracle_server.script(lambda b: "[New Instruction] A real new task. [End]\n[New Answer] N/A")
    recycle(dataset(tmp_path, n=1), tmp_path / "run",
            config(oracle_server, stages=("instruction",), reask=0))
    with RunStore(tmp_path / "run") as store:
        c = store.get_candidate(0, "ins")
    assert (c.instruction, c.output, c.parse_status) == ("A real new task.", "Answer 0", "partial")
    assert c.fallback_reason.startswith("New Answer: not_applicable")


def test_multi_turn_passes_through_and_compress_merges_input(oracle_server, tmp_path):
    conv = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    src = dataset(tmp_path, n=3, extra=[conv])
    recycle(src, tmp_path / "run", config(oracle_server, stages=("compress", "instruction")))
    with RunStore(tmp_path / "run") as store:
        orig = store.get_candidate(3, "orig")
        assert orig.parse_status == "skipped" and "multi_turn" in orig.fallback_reason
        assert store.get_candidate(3, "ins") is None
        comp = store.get_candidate(0, "compress")
        assert comp.instruction.startswith("merged task") and comp.input == ""
        assert store.get_candidate(1, "compress") is None  # no input: nothing to merge


def test_oracle_outage_records_failures_and_next_run_finishes(oracle_server, tmp_path):
    oracle_server.script(lambda b: Fault(status=500))
    src = dataset(tmp_path, n=2)
    s = recycle(src, tmp_path / "run", config(oracle_server, stages=("response",),
                                             max_retries=1))
    assert s.failures == {"http_500": 2} and "res" not in s.candidates
    oracle_server.script(default_reply)
    s = recycle(src, tmp_path / "run", config(oracle_server, stages=("response",)))
    assert s.candidates["res"] == {"ok": 2}


def test_context_window_cuts_long_answers_and_records_it(oracle_server, tmp_path):
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"instruction": "Summarise", "output": "word " * 3000}) + "\n")
    recycle(src, tmp_path / "run", config(oracle_server, stages=("response",),
                                          context_length=1500, max_tokens=512))
    sent = oracle_server.requests[0]
    assert sum(len(m["content"]) for m in sent["messages"]) // 4 + sent["max_tokens"] <= 1500
    with RunStore(tmp_path / "run") as store:
        assert "answer cut to fit" in store.get_candidate(0, "res").fallback_reason


def test_bad_input_stops_before_any_call_or_is_skipped(oracle_server, tmp_path):
    src = dataset(tmp_path, n=2, extra=[{"instruction": "x", "output": 5}])
    with pytest.raises(InputError, match=r"data.jsonl, line 3, record 2, field 'output'"):
        recycle(src, tmp_path / "run", config(oracle_server))
    assert oracle_server.requests == []
    s = recycle(src, tmp_path / "run", config(oracle_server, skip_invalid=True))
    assert s.invalid == 1 and s.candidates["res"] == {"ok": 2}


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown stage"):
        RecycleConfig(stages=("reflect",))
    with pytest.raises(ConfigError, match="--model is required"):
        RecycleConfig(oracle="http://127.0.0.1:1/v1")


def test_api_key_never_reaches_store_logs_or_output(oracle_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    oracle_server.script_sequence([Fault(status=500)], then=default_reply)
    env = {**os.environ, "MY_KEY": SECRET}
    r = subprocess.run([sys.executable, "-m", "rtune", "-v", "recycle", str(dataset(tmp_path)),
                        "--run-dir", str(tmp_path / "run"), "--oracle", oracle_server.url,
                        "--model", "m", "--api-key-env", "MY_KEY", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    for f in (tmp_path / "run").iterdir():
        assert SECRET.encode() not in f.read_bytes()
    status = subprocess.run([sys.executable, "-m", "rtune", "status", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=60)
    assert SECRET not in status.stdout and "parse ok 100%" in status.stdout


def test_dry_run_counts_calls_and_calls_nothing(oracle_server, tmp_path):
    from rtune.estimate import estimate

    est = estimate(dataset(tmp_path), config(oracle_server, stages=("compress", "instruction",
                                                                     "response", "both")))
    assert oracle_server.requests == []
    assert {k: v["calls"] for k, v in est["stages"].items()} == {
        "compress": 2, "instruction": 6, "response": 6, "both": 6}
    assert est["total"]["cost"] > 0 and est["total"]["tokens_in"] > 0


def test_real_alpaca_records_with_input_are_compressed(oracle_server, tmp_path, shared_data):
    rows = json.loads((shared_data / "cherry_alpaca_5_percent.json").read_text())
    with_input = [r for r in rows if r["input"].strip()][:40]
    src = tmp_path / "cherry40.json"
    src.write_text(json.dumps(with_input))
    s = recycle(src, tmp_path / "run", config(oracle_server, stages=("compress", "response"),
                                              concurrency=8))
    assert s.candidates["compress"] == {"ok": 40} and s.candidates["res"] == {"ok": 40}
    sent = [b["messages"][-1]["content"] for b in oracle_server.requests]
    assert all(any(r["input"] in m for m in sent) for r in with_input)


@pytest.mark.parametrize("kill_after", [3, 12, 30])
def test_kill_9_mid_run_then_rerun(oracle_server, tmp_path, kill_after):
    """kill -9 at several points; the rerun finishes every record exactly once per stage and
    never repeats a call whose result had been committed."""
    oracle_server.latency = lambda: 0.02
    src = dataset(tmp_path, n=30)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rtune", "recycle", str(src), "--run-dir", str(run_dir),
           "--oracle", oracle_server.url, "--model", "m", "--concurrency", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(oracle_server.completed) < kill_after and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(run_dir / "rtune.sqlite")
    committed = {k for (k,) in db.execute("SELECT key FROM calls")}
    db.close()
    before = len(oracle_server.requests)
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    rerun_keys = [request_key(b) for b in oracle_server.requests[before:]]
    assert not committed & set(rerun_keys)
    with RunStore(run_dir) as store:
        counts = store.candidate_counts()
        assert {k: v.get("ok") for k, v in counts.items()} == {
            "orig": 30, "ins": 30, "res": 30, "both": 30}
        n_calls = store.call_totals()["calls"]
    assert n_calls == 90
    assert len(set(request_key(b) for b in oracle_server.requests)) == 90


# ---------------------------------------------------------------- exit status and failures


def rtune_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtune", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def recycle_cli(url, tmp_path, *extra, n=6, env=None, timeout=120):
    return rtune_cli("recycle", dataset(tmp_path, n=n), "--run-dir", tmp_path / "run",
                     "--oracle", url, "--model", "m", "--no-progress", *extra, env=env,
                     timeout=timeout)


def store_bytes(run_dir) -> bytes:
    return b"".join(f.read_bytes() for f in run_dir.iterdir() if f.is_file())


def test_failed_calls_exit_1_with_count_and_reasons_then_rerun_exits_0(oracle_server, tmp_path):
    oracle_server.script(lambda b: Fault(status=500))
    r = recycle_cli(oracle_server.url, tmp_path, "--stages", "response", "--max-retries", "0")
    assert r.returncode == 1, r.stderr
    assert "failed: 6 oracle call(s), by reason: http_500 6; rerun" in r.stdout
    oracle_server.script(default_reply)
    r = recycle_cli(oracle_server.url, tmp_path, "--stages", "response")
    assert r.returncode == 0, r.stderr
    assert "failed:" not in r.stdout


def test_401_stops_the_run_at_once_in_one_line_without_the_key(oracle_server, tmp_path):
    oracle_server.script(lambda b: Fault(status=401, echo_headers=True))
    env = {**os.environ, "MY_KEY": SECRET}
    start = time.monotonic()
    r = recycle_cli(oracle_server.url, tmp_path, "--api-key-env", "MY_KEY", "--concurrency",
                    "2", n=30, env=env)
    assert time.monotonic() - start < 30
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtune recycle: error: ")
    assert "refused the API key (HTTP 401; sent $MY_KEY)" in lines[0]
    assert len(oracle_server.requests) <= 4  # of 90 calls: the ones in flight, no more
    assert SECRET not in r.stdout + r.stderr
    assert SECRET.encode() not in store_bytes(tmp_path / "run")


def test_nothing_listening_is_named_and_stops_the_run(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    r = recycle_cli(f"http://127.0.0.1:{port}/v1", tmp_path, n=20)
    assert time.monotonic() - start < 30  # was a minute of retries per call, named "timeout"
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing listens at" in lines[0], r.stderr
    assert "connection refused" in lines[0] and "timeout" not in lines[0]


def test_server_error_echoing_the_key_is_redacted_everywhere(oracle_server, tmp_path):
    """A 500 whose text repeats the request's Authorization header: the key reaches neither
    stderr (warnings, -v debug logging), nor the store's failure details, nor `rtune status`."""
    oracle_server.script(lambda b: Fault(status=500, echo_headers=True))
    env = {**os.environ, "MY_KEY": SECRET}
    r = rtune_cli("-v", "recycle", dataset(tmp_path, n=2), "--run-dir", tmp_path / "run",
                  "--oracle", oracle_server.url, "--model", "m", "--no-progress", "--api-key-env",
                  "MY_KEY", "--max-retries", "0", "--stages", "response", env=env)
    assert SECRET not in r.stdout + r.stderr
    assert SECRET.encode() not in store_bytes(tmp_path / "run")
    assert "request headers" in r.stderr and "Bearer [redacted]" in r.stderr
    assert r.returncode == 1
    with RunStore(tmp_path / "run") as store:
        details = [d for (d,) in store.db.execute("SELECT detail FROM failures")]
    assert len(details) == 2 and all("[redacted]" in d for d in details)
    status = rtune_cli("status", tmp_path / "run", "--json")
    assert SECRET not in status.stdout + status.stderr


def test_status_separates_standing_failures_from_repaired_ones(oracle_server, tmp_path):
    from rtune.status import run_status

    def task_1_fails(body):
        return Fault(status=500) if "Task 1" in body["messages"][-1]["content"] \
            else default_reply(body)

    src, run = dataset(tmp_path, n=3), tmp_path / "run"
    oracle_server.script(task_1_fails)
    s = recycle(src, run, config(oracle_server, stages=("response",), max_retries=0))
    assert s.failures == {"http_500": 1}
    assert run_status(run)["failures"] == {"standing": {"http_500": 1}, "repaired": {}}
    oracle_server.script(default_reply)
    s = recycle(src, run, config(oracle_server, stages=("response",)))
    assert s.failures == {} and s.candidates["res"] == {"ok": 3}
    assert run_status(run)["failures"] == {"standing": {}, "repaired": {"http_500": 1}}
    text = rtune_cli("status", run).stdout
    assert "call failures repaired by a later run: http_500 1" in text
    assert "still standing" not in text


# ---------------------------------------------------------------- Ctrl-C with a local oracle


@pytest.fixture(scope="module")
def long_context_llama(tiny_llama_path, tmp_path_factory):
    """The tiny random Llama with an 8192-token window: a short prompt gets a budget of
    thousands of tokens, a batch of it tens of seconds on a CPU (random weights rarely say
    EOS), while a prompt that nearly fills the window gets a few hundred."""
    import shutil

    folder = tmp_path_factory.mktemp("long") / "llama"
    shutil.copytree(tiny_llama_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_ctrl_c_stops_a_local_batch_within_seconds_keeping_finished_calls(long_context_llama,
                                                                          tmp_path):
    long_first = {"instruction": "Task 0", "input": "", "output": "word " * 7000}
    src = dataset(tmp_path, n=2)
    src.write_text(json.dumps(long_first) + "\n" + src.read_text().splitlines()[1] + "\n")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtune", "recycle", str(src), "--run-dir", str(run_dir),
         "--oracle", f"local:{long_context_llama}", "--stages", "response", "--example", "off",
         "--concurrency", "1", "--batch-size", "1", "--max-tokens", "8192", "--reask", "0",
         "--loop-guard", "0",  # the random model repeats itself: let it run
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a shell: a child inherits an ignored SIGINT (some library in this test
        # process may leave it so), and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        finished = wait_for_calls(run_dir / "rtune.sqlite", 1, timeout=120)
        time.sleep(0.3)  # the second record's batch (thousands of tokens) is running now
        assert proc.poll() is None, "the run ended before Ctrl-C"
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, (
        proc.returncode, signal.getsignal(signal.SIGINT), err[-2000:])
    assert stopped_in < 10, f"Ctrl-C took {stopped_in:.1f}s"
    with RunStore(run_dir) as store:
        assert store.call_totals()["calls"] == finished
        assert store.get_candidate(0, "res") is not None and store.get_candidate(1, "res") is None


def wait_for_calls(db_path, n: int, timeout: float) -> int:
    """Poll the run store until it holds ``n`` finished calls; return how many it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db_path.exists():
            try:
                db = sqlite3.connect(db_path, timeout=5)
                count = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
                db.close()
                if count >= n:
                    return count
            except sqlite3.OperationalError:  # no table yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"no {n} finished call(s) in {timeout}s")
