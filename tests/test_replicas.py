"""Several --oracle URLs for replicas of one model: one window, least-outstanding routing, a
failing replica backed off without stalling the others."""

import socket
import time

import pytest

from oracle_server import Fault, OracleServer
from record_files import alpaca_jsonl
from rtune.cli import main
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.status import run_status


@pytest.fixture
def two():
    with OracleServer(latency=lambda: 0.02) as a, OracleServer(latency=lambda: 0.02) as b:
        yield a, b


def dataset(tmp_path, n=10):
    return alpaca_jsonl(tmp_path, n)


def config(urls, **kw):
    return RecycleConfig(**{"oracle": urls[0], "replicas": tuple(urls[1:]),
                            "model": "gpt-4o-mini", "progress": False, "concurrency": 8, **kw})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_least_outstanding_routing_shares_the_calls(two, tmp_path):
    a, b = two
    s = recycle(dataset(tmp_path, n=20), tmp_path / "run", config([a.url, b.url]))
    assert s.calls["calls"] == 60 and not s.failures
    assert len(a.requests) + len(b.requests) == 60
    assert min(len(a.requests), len(b.requests)) >= 20  # about half each
    replicas = run_status(tmp_path / "run")["replicas"]
    assert [r["url"] for r in replicas] == [a.url, b.url]
    assert [r["calls"] for r in replicas] == [len(a.completed), len(b.completed)]


def test_a_failing_replica_is_backed_off_and_the_other_carries_on(two, tmp_path, capsys):
    a, b = two
    b.script(lambda body: Fault(status=500))
    start = time.monotonic()
    code = main(["recycle", str(dataset(tmp_path)), "--run-dir", str(tmp_path / "run"),
                 "--oracle", a.url, "--oracle", b.url, "--model", "gpt-4o-mini",
                 "--concurrency", "8", "--no-progress"])
    assert code == 0
    assert time.monotonic() - start < 30  # no call waited out an engine backoff for long
    assert len(a.completed) == 30
    assert len(b.requests) <= 10  # one try, then a second or more of rest per failure
    main(["status", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert f"{a.url}  30 calls" in out
    assert f"{b.url}  0 calls, failures: http_500 {len(b.requests)}" in out


def test_a_replica_nobody_listens_at_does_not_stop_the_run(two, tmp_path):
    a, _ = two
    dead = f"http://127.0.0.1:{free_port()}/v1"
    s = recycle(dataset(tmp_path), tmp_path / "run", config([dead, a.url]))
    assert s.calls["calls"] == 30 and not s.failures
    replicas = run_status(tmp_path / "run")["replicas"]
    assert replicas[0]["calls"] == 0 and replicas[0]["failures"]["connection_refused"] >= 1
    assert replicas[1]["calls"] == 30


def test_when_no_replica_listens_the_run_stops_in_one_line(tmp_path, capsys):
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    code = main(["recycle", str(dataset(tmp_path, n=2)), "--run-dir", str(tmp_path / "run"),
                 "--oracle", dead[0], "--oracle", dead[1], "--model", "m", "--no-progress"])
    assert code == 1
    assert "connection refused" in capsys.readouterr().err


def test_replicas_must_be_urls(tmp_path, capsys):
    assert main(["recycle", str(dataset(tmp_path)), "--oracle", "local", "--oracle",
                 "http://127.0.0.1:9/v1", "--model", "m", "--run-dir", str(tmp_path / "r")]) == 2
    assert "give each as an http(s):// base URL" in capsys.readouterr().err
