"""Oracle engine throughput against the loopback server with injected latency.

Prints, per latency model and concurrency: calls/s of rtune's sliding-window engine, its
fraction of the bound concurrency / mean latency, a lock-step baseline ("batches of N, retry
the whole batch") run in the same process, the ratio, and client CPU per call. Then the peak
RSS of `rtune recycle --dry-run` over a 1,000,000-record JSONL.

    python benchmarks/bench_oracle.py [--calls 2000] [--rss-records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtune.oracle import ChatRequest, Engine, EngineConfig
from rtune.oracle.http import HttpBackend

HERE = Path(__file__).resolve().parent
SERVER = HERE.parent / "tests" / "oracle_server.py"
MEAN = 0.2


def start_server(latency: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--latency", latency],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return proc, url


def request(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], model="bench",
                       max_tokens=32)


def run_engine(url: str, calls: int, concurrency: int) -> tuple[float, float]:
    engine = Engine(HttpBackend(url, max_connections=concurrency), None,
                    EngineConfig(concurrency=concurrency, timeout=30))

    async def one(i):
        return await engine.complete(request(i))

    cpu, start = time.process_time(), time.perf_counter()
    engine.run(one, range(calls))
    return time.perf_counter() - start, time.process_time() - cpu


def run_lockstep(url: str, calls: int, batch: int) -> tuple[float, float]:
    backend = HttpBackend(url, max_connections=batch)

    async def go():
        for first in range(0, calls, batch):
            reqs = [request(i) for i in range(first, min(first + batch, calls))]
            while True:  # retry the whole batch if any call fails
                results = await asyncio.gather(*(backend.complete(r) for r in reqs),
                                               return_exceptions=True)
                if not any(isinstance(r, Exception) for r in results):
                    break
        await backend.aclose()

    cpu, start = time.process_time(), time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start, time.process_time() - cpu


def peak_rss_dry_run(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"instruction": f"Explain item {i} in detail.", "input": "",
                                    "output": f"Item {i} is a thing that matters. " * 3}) + "\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rtune", "recycle", str(path), "--dry-run",
                        "--oracle", "http://127.0.0.1:9/v1", "--model", "gpt-4o-mini",
                        "--run-dir", str(Path(tmp) / "run")],
                       check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", default="10,64")
    ap.add_argument("--rss-records", type=int, default=1_000_000)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, calls {a.calls}")
    header = (f"{'latency':>8} {'conc':>5} {'rtune/s':>8} {'of bound':>9} {'lockstep/s':>11} "
              f"{'ratio':>6} {'cpu ms/call':>12}")
    print(header)
    print("-" * len(header))
    for latency in (f"fixed:{MEAN}", f"exp:{MEAN}"):
        proc, url = start_server(latency)
        try:
            for conc in (int(c) for c in a.concurrency.split(",")):
                wall, cpu = run_engine(url, a.calls, conc)
                base_wall, _ = run_lockstep(url, a.calls, conc)
                rate, base = a.calls / wall, a.calls / base_wall
                bound = conc / MEAN
                print(f"{latency.split(':')[0]:>8} {conc:>5} {rate:8.1f} {rate / bound:9.3f} "
                      f"{base:11.1f} {rate / base:6.2f} {1000 * cpu / a.calls:12.3f}",
                      flush=True)
        finally:
            proc.terminate()
    if a.rss_records:
        rss, secs = peak_rss_dry_run(a.rss_records)
        print(f"\ndry-run over {a.rss_records:,} JSONL records: peak RSS {rss:.0f} MB, "
              f"{secs:.0f} s (goal < 500 MB)")


if __name__ == "__main__":
    main()
