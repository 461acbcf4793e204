"""The experiment page: the arms side by side, every number linked to the files it came from.

``OUT/report/index.html`` shows data statistics per arm (lengths in tokens, coherence, IFD,
r-IFD), selection counts, training loss curves, W/T/L per test set with the win-rate score's
95% interval, benchmark deltas and each step's wall time. ``OUT/report/records/`` is the
``rtune report`` page of the run (every candidate, its scores and selection decision, word
diffs) with the arms' training files as extra inputs; the numbers of the statistics table
are in its ``stats.json``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .experiment_page_html import PAGE
from .io import write_text_atomic
from .model_spec import EMBEDDED_NAME, ModelSpec

if TYPE_CHECKING:
    from .experiment import Experiment

PAGE_VERSION = "1"
EMBEDDED = f"the embedded {EMBEDDED_NAME}"


def write_page(exp: Experiment) -> dict[str, Path]:
    """Write ``report/index.html`` (+ ``report/records/``); returns the paths written."""
    from .extras import require

    require("report", "rtune run (report)")
    out = exp.report_dir
    out.mkdir(parents=True, exist_ok=True)
    records = _records_report(exp, out / "records")
    steps = exp.state.get("steps", {})
    page = _render(exp, steps, records)
    index = out / "index.html"
    write_text_atomic(index, page)
    return {"page": index, "records": out / "records" / "index.html"}


def _records_report(exp: Experiment, folder: Path) -> dict[str, Any]:
    """``rtune report`` on the run and the arms' training files; returns its statistics."""
    from .report import write_report
    from .stats import compute_stats, load_coherence, load_input, make_length_counter

    r = exp.recipe
    inputs = [load_input(exp.run_dir, "run")]
    for arm in r.arms:
        inputs.append(load_input(exp.data_file(arm), arm))
    lengths = make_length_counter(_tokenizer(r.base_model.spec))
    model, note = load_coherence()
    stats = compute_stats(inputs, lengths, model, coherence_note=note,
                          coherence_model="all-MiniLM-L6-v2" if model else None)
    write_report(stats, folder, title=f"rtune experiment {r.name}: records")
    return stats.to_dict()


def _tokenizer(spec: str) -> str | None:
    """The base model's folder (lengths in the tokens it trains on); None: the embedded one."""
    from .errors import ConfigError
    from .models import resolve_model

    parsed = ModelSpec.parse(spec)
    if parsed.is_endpoint or parsed.path is None:
        return None
    try:
        return str(resolve_model(spec))
    except ConfigError:
        return None


# ---------------------------------------------------------------- the page


def _render(exp: Experiment, steps: dict[str, Any], stats: dict[str, Any]) -> str:
    import jinja2

    r = exp.recipe
    rel = _Linker(exp.report_dir)
    arms = []
    for name, arm in r.arms.items():
        t = (steps.get(f"train:{name}") or {}).get("summary") or {}
        arms.append({"name": name, "train": t,
                     "data": Path(arm.data).name if os.path.isabs(arm.data) else arm.data,
                     "model": rel(exp.model_dir(name)), "data_link": rel(exp.data_file(name)),
                     "wall": (steps.get(f"train:{name}") or {}).get("wall_s")})
    groups = [g for g in stats.get("groups", []) if g["dataset"] != "run" or
              g["group"] in ("orig", "ins", "res", "both", "selected")]
    judges = []
    for a, b in r.pairs:
        j = steps.get(f"judge:{a}-vs-{b}") or {}
        folder = exp.judge_dir(a, b)
        chart = folder / "wtl.png"
        judges.append({"a": a, "b": b, "summary": j.get("summary") or {},
                       "results": rel(folder / "results.json"),
                       "questions": rel(folder / "questions.jsonl"),
                       "answers_a": rel(exp.answers(a)), "answers_b": rel(exp.answers(b)),
                       "chart": base64.b64encode(chart.read_bytes()).decode()
                       if chart.is_file() else None})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(PAGE).render(
        r=r, exp=exp, state=exp.state, arms=arms, groups=groups, stats=stats,
        selection=(steps.get("select") or {}).get("summary") or {}, cases=_cases(),
        loss_png=_loss_figure(arms), judges=judges, bench=_bench_table(exp, steps),
        steps=[{"name": k, **v} for k, v in steps.items() if k != "report"], notes=_notes(r),
        links={"json": rel(exp.out / "experiment.json"),
               "records": "records/index.html", "stats": "records/stats.json",
               "run": rel(exp.run_dir), "candidates": rel(exp.run_dir / "candidates.jsonl")},
        num=_num, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))


class _Linker:
    """Paths relative to the page, so the folder can be moved or served as is."""

    def __init__(self, page_dir: Path):
        self.page_dir = page_dir.resolve()

    def __call__(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.page_dir)


def _cases() -> dict[str, str]:
    from .select import CASES

    return CASES


def _notes(r: Any) -> list[str]:
    """Plain warnings where a weak model makes a number meaningless."""
    notes = []
    if ModelSpec.parse(r.judge_model.spec).is_embedded:
        notes.append(f"The judge is {EMBEDDED}: far too weak to judge answers. The W/T/L "
                     "numbers below show that the pipeline runs end to end, not which arm is "
                     "better. Use a strong judge (models.judge: an endpoint and model) for "
                     "results.")
    if ModelSpec.parse(r.oracle.spec).is_embedded:
        notes.append(f"The oracle is {EMBEDDED}: it follows the reflection format only "
                     "part of the time; the rest falls back to the original text (see the "
                     "records page for each reason). Real recycling needs a strong oracle.")
    steps = [a.train.max_steps for a in r.arms.values()]
    if all(0 < n <= 50 for n in steps):
        notes.append(f"Each arm trains for at most {max(steps)} optimizer steps: the loss curves "
                     "and answers show the mechanics, not the effect of the data.")
    return notes


def _loss_figure(arms: list[dict[str, Any]]) -> str | None:
    series = [(a["name"], a["train"].get("losses") or []) for a in arms]
    if not any(losses for _, losses in series):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, losses in series:
        if losses:
            ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=3, label=name)
    ax.set_xlabel("logged step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bench_table(exp: Experiment, steps: dict[str, Any]) -> dict[str, Any] | None:
    """Rows (task, metric) x arms, and a delta column per pair (A minus B)."""
    r = exp.recipe
    if r.bench is None:
        return None
    values: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for arm in r.arms:
        for row in ((steps.get(f"bench:{arm}") or {}).get("summary") or {}).get("rows", []):
            key = (row["task"], row["metric"], row.get("filter") or "")
            values.setdefault(key, {})[arm] = row.get("value")
    rows = []
    for (task, metric, filt), by_arm in sorted(values.items()):
        deltas = {}
        for a, b in r.pairs:
            va, vb = by_arm.get(a), by_arm.get(b)
            deltas[f"{a}-{b}"] = None if va is None or vb is None else va - vb
        rows.append({"task": task, "metric": metric, "filter": filt, "values": by_arm,
                     "deltas": deltas})
    return {"arms": list(r.arms), "pairs": [f"{a}-{b}" for a, b in r.pairs], "rows": rows,
            "files": {arm: _Linker(exp.report_dir)(exp.bench_file(arm)) for arm in r.arms}}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        value = value.get("mean")
        if value is None:
            return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
