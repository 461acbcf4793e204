"""Time ``rtune run RECIPE`` from scratch (wall time per step, from experiment.json) and a
no-op rerun (whole command, and the oracle / judge calls it made: goal under 5 s, 0 calls).

    python benchmarks/bench_experiment.py                       # recipes/quickstart.yaml
    python benchmarks/bench_experiment.py --recipe my.yaml --out /tmp/exp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def calls(out: Path) -> int:
    """Every oracle / judge call committed to the experiment's stores."""
    total = 0
    for db in out.rglob("rtune.sqlite"):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            total += con.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        finally:
            con.close()
    return total


def rtune_run(recipe: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``rtune run`` process."""
    cmd = [sys.executable, "-m", "rtune", "run", str(recipe), "-o", str(out)]
    cpu0 = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"rtune run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, _children_cpu() - cpu0


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart.yaml"))
    ap.add_argument("--out", default="/tmp/rtune-bench-experiment")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()
    first, first_cpu = rtune_run(Path(args.recipe), out)
    state = json.loads((out / "experiment.json").read_text())
    before = calls(out)
    second, second_cpu = rtune_run(Path(args.recipe), out)
    after = json.loads((out / "experiment.json").read_text())
    print(f"recipe {args.recipe}; load average at start {load[0]:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs\n")
    print("| step | wall time (s) |\n|---|---:|")
    for name, wall in state["wall_s"].items():
        print(f"| {name} | {wall:.1f} |")
    print(f"| **whole command** (incl. start-up) | **{first:.1f}** |\n")
    print(f"CPU time of the first run: {first_cpu:.0f} s (user + system, all threads)")
    print(f"no-op rerun: {second:.2f} s ({second_cpu:.2f} s CPU) for the whole command, steps run: "
          f"{after['runs'][-1]['ran'] or 'none'}, new calls: {calls(out) - before} "
          f"({before} in the stores)")


if __name__ == "__main__":
    main()
