"""The body of each experiment step: call the stage's Python API with the recipe's settings.

``fresh=True`` first removes what an earlier run of the step left (its settings differed);
``fresh=False`` continues a killed run of the same step. The oracle-call cache of the run
store is never removed, so a redone step pays only for requests that changed. Each runner
returns what ``experiment.json`` records: ``outputs`` (paths in the experiment folder) and a
``summary`` of the numbers the report shows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputError
from .experiment import Echo, Step, StepIncomplete, _is_source

if TYPE_CHECKING:
    from .experiment import Experiment

Result = dict[str, Any]


def _tty() -> bool:
    return sys.stderr.isatty()


def _settings(cls: type, values: dict[str, Any], **given: Any) -> Any:
    """``cls`` from the recipe section's values that are its fields, and ``given``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **given)


# ---------------------------------------------------------------- recycle, score, select


def run_recycle(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .recycle import recycle
    from .store import RunStore

    r = exp.recipe
    if fresh and (exp.run_dir / "rtune.sqlite").exists():
        with RunStore(exp.run_dir) as store:  # keep the calls: a same request is not paid again
            store.db.execute("DELETE FROM candidates")
            store.db.execute("DELETE FROM invalid")
    config = dataclasses.replace(r.recycle, progress=_tty())
    out = exp.run_dir / "candidates.jsonl"
    if config.mode == "batch":
        summary = _recycle_batch(exp, config, out)
    elif config.mode == "online":
        s = recycle(r.data, exp.run_dir, config, output=out)
        summary = {"records": s.records, "candidates": s.candidates, "calls": s.calls,
                   "failures": s.failures, "invalid": s.invalid}
    else:
        raise ConfigError(
            f"recycle.mode {config.mode}: its request files run outside the experiment; run "
            f"`rtune recycle {r.data} --run-dir {exp.run_dir} --mode {config.mode} ...` until "
            "every result is in, then the experiment with recycle.mode online or batch (every "
            "stored call is reused, none is paid again)")
    candidates = summary["candidates"]
    kinds = {k: sum(v.values()) for k, v in candidates.items()}
    single = kinds.get("orig", 0) - candidates.get("orig", {}).get("skipped", 0)
    short = {k: single - kinds.get(k, 0) for k in ("ins", "res", "both", "reflection")
             if k in _kinds(r) and kinds.get(k, 0) < single}
    if short:
        raise StepIncomplete(
            "recycle: candidates missing after failed oracle calls ("
            + ", ".join(f"{k} {n}" for k, n in short.items()) + "); rerun to retry them "
            "(finished calls are not paid again; rtune status " + str(exp.run_dir) + ")")
    return {"outputs": {"run": exp.rel(exp.run_dir), "candidates": exp.rel(out)},
            "summary": summary}


def _recycle_batch(exp: Experiment, config: Any, out: Path) -> dict[str, Any]:
    """One step of ``--mode batch`` (collect what finished, submit the next round); the step
    stays unfinished while batches run or requests wait, and a rerun steps on."""
    from .recycle_batch import recycle_batch

    s = recycle_batch(exp.recipe.data, exp.run_dir, config, output=out)
    if not s.done:
        raise StepIncomplete(
            f"recycle: {s.active} batch(es) running at the Batch API, {s.pending} request(s) "
            f"waiting to be sent; rerun later to collect them and send the next round "
            f"(rtune status {exp.run_dir})")
    counts = s.totals["candidates"]
    return {"records": sum(counts.get("orig", {}).values()), "candidates": counts,
            "calls": s.totals["calls"], "failures": s.failures,
            "invalid": s.totals["invalid"], "requests": s.totals["requests"]}


def _kinds(recipe: Any) -> set[str]:
    from .recycle_config import STAGE_KIND

    return {STAGE_KIND[s] for s in recipe.recycle.stages}


def run_score(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .extras import require
    from .score import score_run
    from .store import RunStore

    require("local", "rtune run (score)")
    if fresh:
        with RunStore(exp.run_dir) as store:
            store.delete_scores()
    s = score_run(exp.run_dir, exp.recipe.score)
    keep = ("candidates", "scored_total", "seconds", "records_per_s", "by_kind",
            "undefined_reasons")
    return {"outputs": {"run": exp.rel(exp.run_dir)}, "summary": {k: s.get(k) for k in keep}}


def run_select(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .io import write_records
    from .score_config import SCORE_FIELDS
    from .select import NAMESPACE, select, write_selection
    from .store import RunStore

    r = exp.recipe
    with RunStore(exp.run_dir) as store:
        store.db.execute("DELETE FROM items WHERE ns = ?", (NAMESPACE,))
    sel = select(exp.run_dir, **r.select)
    with RunStore(exp.run_dir) as store:
        scores = store.scores()
        written: dict[str, dict[str, Any]] = {}
        for arm in r.arms:
            data = r.arms[arm].data
            path = exp.data_file(arm)
            if not _is_source(data) or data in written:
                continue
            if data == "selected":
                n = write_selection(sel, path)
            else:
                kind = "orig" if data == "original" else data
                recs = []
                for rec in store.candidates(kind):
                    s = scores.get((rec.source_index, rec.kind)) or {}
                    rec.extra = {**rec.extra, **{k: s[k] for k in SCORE_FIELDS if k in s}}
                    recs.append(rec)
                n = write_records(recs, path)
            written[data] = {"path": exp.rel(path), "records": n}
    counts = sel.counts()
    summary = {"policy": r.select["policy"], "sources": len(sel.decisions),
               "kept": sum(c["kept"] for c in counts.values()), "cases": counts,
               "files": written}
    return {"outputs": {d: w["path"] for d, w in written.items()}, "summary": summary}


# ---------------------------------------------------------------- train, generate


def run_train(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .extras import require
    from .io import read_records
    from .train import train

    require("train", "rtune run (train)")
    arm = exp.recipe.arms[step.target or ""]
    out = exp.model_dir(arm.name)
    data = exp.data_file(arm.name)
    if next(iter(read_records(data)), None) is None:
        raise InputError(str(data), f"arm '{arm.name}' has no records to train on (its data, "
                         f"{arm.data}, is empty)")
    if fresh and out.exists():
        shutil.rmtree(out)
    resume: bool | str = False if fresh else (_last_checkpoint(out) or False)
    config = dataclasses.replace(arm.train, model=exp.recipe.base_model.spec,
                                 output_dir=str(out), resume=resume, progress_bar=_tty())
    if resume:
        echo(f"  continuing from {exp.rel(Path(resume))}")
    result = train(data, config, echo=lambda m: echo(f"  {m}"))
    for ckpt in out.glob("checkpoint-*"):  # they serve only to continue a killed step
        shutil.rmtree(ckpt, ignore_errors=True)
    d = result.data
    summary = {"data": exp.rel(data), "records": d.records, "used": d.used,
               "truncated": len(d.truncated), "dropped": len(d.dropped), "tokens": d.tokens,
               "answer_tokens": d.answer_tokens, "steps": result.steps, "epochs": result.epochs,
               "losses": result.losses, "train_loss": result.train_loss,
               "batch": result.plan.describe(), "tokens_per_s": round(result.tokens_per_s, 1),
               "resumed_from": Path(result.resumed_from).name if result.resumed_from else None,
               "sha256": exp.digests.folder(out)}
    return {"outputs": {"model": exp.rel(out)}, "summary": summary}


def _last_checkpoint(out: Path) -> str | None:
    """The newest checkpoint that was written to the end (its trainer_state.json, which
    Trainer writes last, is whole); later, half-written ones are removed."""
    ckpts = sorted(out.glob("checkpoint-*"),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit()
                   else -1, reverse=True)
    for ckpt in ckpts:
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        return str(ckpt)
    return None


def run_generate(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .extras import require
    from .generate import GenerateConfig, generate

    require("local", "rtune run (generate)")
    arm = step.target or ""
    out, run_dir = exp.answers(arm), exp.answers_run(arm)
    if fresh:
        out.unlink(missing_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    config = _settings(GenerateConfig, exp.recipe.generate, spec=str(exp.model_dir(arm)),
                       name=arm)
    s = generate(config, exp.recipe.test_sets, out, run_dir=run_dir, progress=_tty())
    if s["failed"]:
        raise StepIncomplete(f"generate:{arm}: {len(s['failed'])} answers failed "
                             f"({s['failed'][0]['reason']}); rerun to retry them")
    summary = {k: s[k] for k in ("questions", "written", "generated", "settings")}
    return {"outputs": {"answers": exp.rel(out)}, "summary": summary}


# ---------------------------------------------------------------- judge, bench, report


def run_judge(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .judge import JudgeConfig, judge

    a, _, b = (step.target or "").partition("-vs-")
    r = exp.recipe
    ref = r.judge_model
    out = exp.judge_dir(a, b)
    if fresh:  # the judge's own store stays: its judgments are checked request by request
        for name in ("results.json", "questions.jsonl", "wtl.png"):
            (out / name).unlink(missing_ok=True)
    config = _settings(JudgeConfig, r.judge, spec=ref.spec, model=ref.model,
                       api_key_env=ref.api_key_env)
    res = judge([exp.answers(a)], [exp.answers(b)], config, run_dir=out / "run", out_dir=out,
                progress=_tty())
    if res["failures"].get("error"):
        raise StepIncomplete(f"judge:{a}-vs-{b}: {res['failures']['error']} judgments failed "
                             "(endpoint errors); rerun to retry them")
    summary = {k: res.get(k) for k in ("a", "b", "test_sets", "overall", "failures", "judge",
                                       "calls")}
    outputs = {k: exp.rel(Path(v)) for k, v in res.get("files", {}).items()}
    return {"outputs": outputs, "summary": summary}


def run_bench(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .bench import bench

    arm = step.target or ""
    out = exp.bench_file(arm)
    out.unlink(missing_ok=True)
    b = dict(exp.recipe.bench or {})
    tasks = b.pop("tasks")
    summary = bench(str(exp.model_dir(arm)), tasks, output=out, **b)
    rows = [{k: r.get(k) for k in ("task", "metric", "filter", "value", "stderr", "n")}
            for r in summary.get("rows", [])]
    return {"outputs": {"summary": exp.rel(out)}, "summary": {"rows": rows}}


def run_report(exp: Experiment, step: Step, *, fresh: bool, echo: Echo) -> Result:
    from .experiment_page import write_page

    paths = write_page(exp)
    return {"outputs": {k: exp.rel(v) for k, v in paths.items()}, "summary": {}}


RUNNERS: dict[str, Callable[..., Result]] = {
    "recycle": run_recycle, "score": run_score, "select": run_select, "train": run_train,
    "generate": run_generate, "judge": run_judge, "bench": run_bench, "report": run_report}
