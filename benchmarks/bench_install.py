"""Install figures: the core install vs the full set-up, on fresh venvs with an empty pip cache.

    python benchmarks/bench_install.py            # core install, rtune --help, recycle --dry-run
    python benchmarks/bench_install.py --setup    # + bash scripts/setup.sh on a fresh copy

Prints a table: wall time, installed size, whether torch came in, and whether any compiler
process ran (sampled every 0.2 s), and the ratio of the core install to the full set-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPILERS = {"cc1", "cc1plus", "cmake", "gcc", "g++", "ninja", "c++", "ld"}


class CompilerWatch(threading.Thread):
    """Samples the process table; records any compiler that runs while it watches."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            out = subprocess.run(["ps", "-eo", "comm="], capture_output=True, text=True).stdout
            self.seen |= {name for name in out.split() if name in COMPILERS}


def du_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e6


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, set[str]]:
    watch = CompilerWatch()
    watch.start()
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    watch.stop.set()
    watch.join()
    return elapsed, watch.seen


def fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file() and not name.startswith(".venv"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def median_seconds(cmd: list[str], cwd: Path, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="also time scripts/setup.sh")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        core = tmp_path / "core"
        subprocess.run([sys.executable, "-m", "venv", str(core)], check=True)
        base = du_mb(core)
        seconds, compilers = timed([str(core / "bin/pip"), "install", "-q", str(REPO)], tmp_path,
                                   env)
        torch = subprocess.run([str(core / "bin/python"), "-c", "import torch"],
                               capture_output=True).returncode == 0
        rows.append(("pip install . (core)", seconds, du_mb(core) - base, torch, compilers))
        helps = median_seconds([str(core / "bin/rtune"), "--help"], tmp_path)
        sample = REPO / "examples" / "alpaca_sample.json"
        dry = median_seconds([str(core / "bin/rtune"), "recycle", str(sample), "--run-dir",
                              str(tmp_path / "dry"), "--oracle", "https://api.openai.com/v1",
                              "--model", "gpt-4o-mini", "--dry-run"], tmp_path, runs=3)
        if args.setup:
            clone = fresh_copy(tmp_path / "clone")
            seconds, compilers = timed(["bash", "scripts/setup.sh"], clone, env)
            torch = (clone / ".venv/lib").exists() and any((clone / ".venv/lib").glob(
                "python3*/site-packages/torch"))
            rows.append(("bash scripts/setup.sh (all extras, tests, model weights)", seconds,
                         du_mb(clone / ".venv"), torch, compilers))
    print("| step | wall s | installed MB | torch | compiler ran |\n|---|---|---|---|---|")
    for name, seconds, size, torch, compilers in rows:
        print(f"| {name} | {seconds:.0f} | {size:.0f} | {'yes' if torch else 'no'} | "
              f"{', '.join(sorted(compilers)) or 'no'} |")
    print(f"\nrtune --help on the core install: {helps:.3f} s (median of 5)")
    print(f"rtune recycle --dry-run (core, 8 sample records): {dry:.3f} s (median of 3)")
    if len(rows) == 2:
        print(f"core install / full set-up: time x{rows[0][1] / rows[1][1]:.2f}, "
              f"size x{rows[0][2] / rows[1][2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
