"""Recycling at scale: batch-result import speed and memory, online vs Batch API cost, replicas.

    python benchmarks/bench_batch.py import [--lines 100000,300000,1000000]
    python benchmarks/bench_batch.py cost [--records 52002]
    python benchmarks/bench_batch.py replicas [--runs 5 --calls 600 --concurrency 16]

``import``: a run store whose ledger holds N requests (bodies of a typical reflection prompt,
~1.3 KB), and a result file of N lines as vLLM's batch runner writes them (a ~0.9 KB reply
each); the import of that file runs in a fresh process, timed, its peak RSS read from the
kernel (``VmHWM``), then imported again (a second import changes nothing).

``cost``: ``rtune recycle --dry-run`` of the paper's Alpaca recycle (stages instruction,
response, both; gpt-4o-mini) online and in ``--mode batch``. The input is the real Alpaca
records of ``cherry_alpaca_5_percent.json`` repeated to 52,002 records (Alpaca's size).

``replicas``: the same recycle against one loopback server and against two (each its own
process, 100 ms fixed latency, at most ``concurrency`` requests at a time each, like a served
model's batch slots), engine concurrency = per-replica concurrency x replicas; records/s,
median of interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER = REPO / "tests" / "oracle_server.py"
SHARED = REPO.parent / "shared" / "data" / "cherry_alpaca_5_percent.json"
PROMPT = ("Here is an instruction and the answer that was given to it. Critique the answer on "
          "helpfulness, relevance, accuracy and level of detail, then write a better one. ")
REPLY = ("The answer lacks detail and does not explain its reasoning. [Better Answer] " +
         "A fuller answer that covers each point in turn, with an example. " * 12 + "[End]")


# ---------------------------------------------------------------- import
def build(folder: Path, n: int) -> tuple[Path, Path]:
    """A run store with ``n`` requests out, and their result file (vLLM's line shape)."""
    from rtune.batch_ledger import Ledger
    from rtune.store import RunStore

    run_dir, results = folder / f"run-{n}", folder / f"results-{n}.jsonl"
    rng = random.Random(n)
    with RunStore(run_dir, writer="bench") as store:
        ledger = Ledger(store)
        with ledger.transaction():
            rows = []
            for i in range(n):
                body = json.dumps({"messages": [
                    {"role": "system", "content": "You are a meticulous editor."},
                    {"role": "user", "content": PROMPT * 5 + f"[Instruction] task {i} [End]"}],
                    "model": "Qwen/Qwen2.5-7B-Instruct", "temperature": 0.0, "top_p": 1.0,
                    "max_tokens": 2048})
                rows.append((f"{rng.getrandbits(256):064x}", "response", 1, "out", "round-1",
                             len(body) + 100, len(body) // 4, 2048, body))
                if len(rows) == 10_000:
                    _insert(store, rows)
                    rows = []
            _insert(store, rows)
        keys = [k for (k,) in store.db.execute("SELECT key FROM batch_requests")]
    rng.shuffle(keys)  # results come in any order
    with open(results, "w") as out:
        for key in keys:
            body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1718000000,
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY,
                                                         "tool_calls": [],
                                                         "reasoning_content": None},
                                 "logprobs": None, "finish_reason": "stop",
                                 "stop_reason": None}],
                    "usage": {"prompt_tokens": 330, "total_tokens": 560,
                              "completion_tokens": 230}}
            out.write(json.dumps({"id": f"vllm-{key[:32]}", "custom_id": key,
                                  "response": {"status_code": 200, "request_id": "vllm-batch-1",
                                               "body": body}, "error": None},
                                 separators=(",", ":")) + "\n")
    return run_dir, results


def _insert(store, rows) -> None:
    """Ledger rows as :meth:`rtune.batch_ledger.Ledger.add` writes them, the body apart."""
    store.db.executemany(
        "INSERT INTO batch_requests(key, stage, round, state, batch, size, tokens_in, "
        "max_tokens) VALUES (?,?,?,?,?,?,?,?)", [r[:-1] for r in rows])
    store.db.executemany("INSERT INTO batch_bodies VALUES (?, ?)", [(r[0], r[-1]) for r in rows])


def child_import(run_dir: str, results: str) -> None:
    """(in a fresh process) import ``results`` twice; print seconds, RSS, counts."""
    from rtune.batch_import import Importer
    from rtune.batch_ledger import Ledger
    from rtune.oracle.pricing import Prices
    from rtune.store import RunStore

    with RunStore(run_dir, writer="bench") as store:
        importer = Importer(Ledger(store), Prices())
        base = _memory_kb("VmHWM")
        start, cpu = time.perf_counter(), time.process_time()
        first = importer.import_file(results)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = _memory_kb("VmHWM")
        start = time.perf_counter()
        again = importer.import_file(results)
        again_s = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu": cpu, "imported": first.imported, "rss_before_kb": base,
                      "peak_kb": peak, "again_seconds": again_s, "again_imported":
                      again.imported, "again_already": again.already}))


def _memory_kb(field: str) -> int:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory. Not
    ``ru_maxrss``: that one carries over the parent's peak across fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench_import(sizes: list[int]) -> None:
    print("| lines | file | import s | lines/s | CPU s | lines per CPU s | peak RSS | RSS "
          "before import | second import (changes nothing) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            run_dir, results = build(Path(tmp), n)
            setup = time.perf_counter() - t0
            out = subprocess.run([sys.executable, __file__, "_import", str(run_dir),
                                  str(results)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            assert r["imported"] == n and r["again_imported"] == 0 and r["again_already"] == n
            size = results.stat().st_size / 1e6
            print(f"| {n:,} | {size:,.0f} MB | {r['seconds']:.1f} | "
                  f"{n / r['seconds']:,.0f} | {r['cpu']:.1f} | {n / r['cpu']:,.0f} | "
                  f"{r['peak_kb'] / 1024:.0f} MB | "
                  f"{r['rss_before_kb'] / 1024:.0f} MB | {r['again_seconds']:.1f} s, "
                  f"{n / r['again_seconds']:,.0f} lines/s |", flush=True)
            print(f"  (set-up {setup:.0f} s, not timed)", file=sys.stderr)
            shutil.rmtree(run_dir)
            results.unlink()


# ---------------------------------------------------------------- cost
def bench_cost(records: int) -> None:
    from rtune.estimate import estimate
    from rtune.recycle_config import RecycleConfig

    base = json.loads(SHARED.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "alpaca-52k.jsonl"
        with open(data, "w") as f:
            for i in range(records):
                f.write(json.dumps(base[i % len(base)]) + "\n")
        rows = {}
        for mode in ("online", "batch"):
            config = RecycleConfig(oracle="https://api.openai.com/v1", model="gpt-4o-mini",
                                   mode=mode, progress=False)
            start = time.perf_counter()
            rows[mode] = estimate(data, config)["total"], time.perf_counter() - start
    print("| mode | calls | tokens in | tokens out (typical) | cost | cost if every reply "
          "used max_tokens | dry-run s |")
    print("|---|---|---|---|---|---|---|")
    for mode, (t, seconds) in rows.items():
        cost_max = t["cost_max"] / 2 if mode == "batch" else t["cost_max"]
        print(f"| {mode} | {t['calls']:,} | {t['tokens_in']:,} | {t['tokens_out']:,} | "
              f"${t['cost_mode']:.2f} | ${cost_max:.2f} | {seconds:.1f} |")
    print(f"batch / online = {rows['batch'][0]['cost_mode'] / rows['online'][0]['cost_mode']:.3f}")


# ---------------------------------------------------------------- replicas
def start_server(latency: str, slots: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--latency", latency,
                             "--slots", str(slots)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def recycle_once(urls: list[str], records: int, concurrency: int, folder: Path) -> float:
    from rtune.recycle import recycle
    from rtune.recycle_config import RecycleConfig

    data = folder / f"data-{records}.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"instruction": f"Task {i}", "input": "",
                                            "output": f"Answer {i}"}) + "\n"
                                for i in range(records)))
    run_dir = folder / f"run-{time.monotonic_ns()}"
    config = RecycleConfig(oracle=urls[0], replicas=tuple(urls[1:]), model="bench",
                           concurrency=concurrency * len(urls), progress=False,
                           stages=("instruction", "response", "both"))
    start = time.perf_counter()
    s = recycle(data, run_dir, config)
    seconds = time.perf_counter() - start
    assert s.calls["calls"] == 3 * records and not s.failures, s
    shutil.rmtree(run_dir)
    return records / seconds


def bench_replicas(runs: int, records: int, concurrency: int, latency: str) -> None:
    servers = [start_server(latency, concurrency) for _ in range(2)]
    urls = [u for _, u in servers]
    one, two = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            recycle_once(urls[:1], 20, concurrency, Path(tmp))  # warm-up
            for _ in range(runs):  # interleaved
                one.append(recycle_once(urls[:1], records, concurrency, Path(tmp)))
                two.append(recycle_once(urls, records, concurrency, Path(tmp)))
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait()
    bound = concurrency / _mean(latency) / 3
    print(f"| replicas | engine concurrency | records/s (median of {runs}) | runs | "
          "of the bound |")
    print("|---|---|---|---|---|")
    for n, rates in ((1, one), (2, two)):
        med = statistics.median(rates)
        print(f"| {n} | {concurrency * n} | {med:.1f} | "
              f"{', '.join(f'{r:.1f}' for r in rates)} | {med / (bound * n):.2f} |")
    print(f"two / one = {statistics.median(two) / statistics.median(one):.2f}")


def _mean(latency: str) -> float:
    return float(latency.partition(":")[2])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_import":
        child_import(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("import")
    p.add_argument("--lines", default="100000,300000,1000000")
    p = sub.add_parser("cost")
    p.add_argument("--records", type=int, default=52_002)
    p = sub.add_parser("replicas")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", default="fixed:0.1")
    a = ap.parse_args()
    if a.what == "import":
        bench_import([int(x) for x in a.lines.split(",")])
    elif a.what == "cost":
        bench_cost(a.records)
    else:
        bench_replicas(a.runs, a.records, a.concurrency, a.latency)


if __name__ == "__main__":
    main()
