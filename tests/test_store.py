"""The run store against real files and real processes: one writer per run folder, readers
alongside, foreign SQLite files left untouched, damaged stores reported in one line."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from oracle_server import OracleServer, default_reply
from rtune.errors import RunInUse, StoreError
from rtune.extras import missing
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.store import STORE_NAME, RunStore

# every command that opens an existing run store, as `rtune` arguments (RUN = the run folder);
# report and score only where their extras are installed (else they stop before the store)
READERS = [
    ["status", "RUN"],
    ["export", "RUN", "-o", "OUT/export.jsonl"],
    ["select", "RUN", "--policy", "all", "-o", "OUT/selected.jsonl"],
    ["stats", "RUN", "--no-coherence"],
    *([["report", "RUN", "--no-coherence", "-o", "OUT/report"]] if not missing("report") else []),
    *([["score", "RUN", "--no-progress"]] if not missing("local") else []),
]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "rtune", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def dataset(tmp_path, n=6, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"instruction": f"Task {i} of {name}",
                                        "output": f"Answer {i}"}) + "\n" for i in range(n)))
    return path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readers(run, out):
    for argv in READERS:
        yield [str(run) if a == "RUN" else a.replace("OUT", str(out)) for a in argv]


def assert_one_line(proc, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# ---------------------------------------------------------------- foreign files


@pytest.mark.parametrize("app_id", [0, 0x12345678])
def test_a_foreign_sqlite_file_is_refused_by_every_command_and_left_untouched(tmp_path, app_id):
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / STORE_NAME)
    db.execute(f"PRAGMA application_id = {app_id}")
    db.execute("CREATE TABLE photos(id INTEGER, name TEXT)")
    db.execute("INSERT INTO photos VALUES (1, 'cat.jpg')")
    db.commit()
    db.close()
    before, files = sha(run / STORE_NAME), sorted(os.listdir(run))
    for argv in [*readers(run, tmp_path), ["recycle", dataset(tmp_path), "--run-dir", run,
                                           "--oracle", "http://127.0.0.1:9/v1", "--model", "m"]]:
        assert_one_line(cli(*argv), str(run / STORE_NAME), "not an rtune run store")
    assert sha(run / STORE_NAME) == before
    assert sorted(os.listdir(run)) == files
    with pytest.raises(StoreError, match="leaves it untouched"):
        RunStore(run)


# ---------------------------------------------------------------- damaged stores


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real finished run (40 records, every stage) made against the loopback server."""
    tmp = tmp_path_factory.mktemp("finished")
    with OracleServer() as server:
        recycle(dataset(tmp, n=40), tmp / "run", RecycleConfig(
            oracle=server.url, model="m", progress=False, concurrency=8))
    return tmp / "run"


def copy_run(src, dst):
    dst.mkdir()
    (dst / STORE_NAME).write_bytes((src / STORE_NAME).read_bytes())
    return dst


def test_a_truncated_store_gives_one_line_in_every_command(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    size = (run / STORE_NAME).stat().st_size
    assert size > 100_000
    os.truncate(run / STORE_NAME, size // 2)
    for argv in readers(run, tmp_path):
        assert_one_line(cli(*argv), str(run / STORE_NAME), "damaged", "truncated",
                        f"sqlite3 {run / STORE_NAME} .recover")


def test_damage_found_while_reading_gives_one_line(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    path = run / STORE_NAME
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):  # every page after the first: garbage b-trees
        data[start:start + 8] = b"\xee" * 8
    path.write_bytes(bytes(data))
    for argv in readers(run, tmp_path):
        assert_one_line(cli(*argv), str(path), "damaged", ".recover")


def test_a_store_of_a_newer_rtune_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    db = sqlite3.connect(run / STORE_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer rtune"):
        RunStore(run, create=False)


def test_a_store_made_before_the_mark_still_opens(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    db = sqlite3.connect(run / STORE_NAME)
    db.execute("PRAGMA application_id = 0")
    db.execute("PRAGMA user_version = 0")
    db.close()
    with RunStore(run, create=False) as store:
        assert len(list(store.candidates("both"))) == 40
    with RunStore(run) as store:  # a writer marks it
        assert store.db.execute("PRAGMA application_id").fetchone()[0] == 0x7274756E


# ---------------------------------------------------------------- one writer


def start_recycle(src, run, url, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "rtune", "recycle", str(src), "--run-dir", str(run), "--oracle",
         url, "--model", "m", "--concurrency", "2", "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hold_after(server, n):
    """Answer ``n`` requests, then hold every other one until the returned event is set."""
    gate, count, lock = threading.Event(), [0], threading.Lock()

    def reply(body):
        with lock:
            count[0] += 1
            held = count[0] > n
        if held:
            gate.wait(60)
        return default_reply(body)

    server.script(reply)
    return gate


def wait_for(predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_writer_is_refused_while_readers_work(tmp_path):
    src = dataset(tmp_path, n=8)
    run = tmp_path / "run"
    with OracleServer() as server:
        gate = hold_after(server, 2)
        first = start_recycle(src, run, server.url)
        try:
            wait_for(lambda: len(server.completed) >= 2)
            second = cli("recycle", src, "--run-dir", run, "--oracle", server.url,
                         "--model", "m", "--no-progress")
            assert_one_line(second, str(run), "in use by another process", "rtune recycle",
                            f"pid {first.pid}")
            status = cli("status", run, "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["calls"]["calls"] >= 2
            export = cli("export", run, "-o", tmp_path / "partial.jsonl")
            assert export.returncode == 0, export.stderr
            assert first.poll() is None, "the first run ended before the checks"
            gate.set()
            assert first.wait(timeout=120) == 0, first.stderr.read()
        finally:
            gate.set()
            if first.poll() is None:
                first.kill()
        assert len(server.completed) == len(set(server.completed)) == 8 * 3
    with pytest.raises(RunInUse):
        with RunStore(run, writer="a"), RunStore(run, writer="b"):
            pass


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    src = dataset(tmp_path, n=8)
    run = tmp_path / "run"
    with OracleServer() as server:
        gate = hold_after(server, 2)
        first = start_recycle(src, run, server.url)
        wait_for(lambda: len(server.completed) >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        gate.set()
        second = cli("recycle", src, "--run-dir", run, "--oracle", server.url, "--model", "m",
                     "--no-progress")
        assert second.returncode == 0, second.stderr
        assert len(set(server.completed)) == 8 * 3
