"""``rtune run``: a recipe's whole experiment as one resumable job.

Steps, in order: recycle -> score -> select -> train (each arm) -> generate (each arm) ->
judge (each pair) -> bench (each arm, when the recipe has benchmarks) -> report. Each step
has a fingerprint: a hash of its settings (those that change its result), its inputs (file
and model digests) and the fingerprints of the steps it depends on. ``experiment.json``
records, per step, the fingerprint it ran with and whether it finished. On a rerun:

- a finished step with the same fingerprint and its outputs present is skipped;
- a step that started with the same fingerprint and never finished (killed) continues: the
  stages keep their work (the run store, training checkpoints), so nothing done is redone;
- any other step starts afresh, and so does every step after it that depends on it.

Paid oracle and judge calls are cached by request in the stores, so redoing a step never pays
twice for the same request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .experiment_info import Digests, model_identity
from .io import write_text_atomic
from .recipe import ARM_SOURCES, Recipe

FORMAT = 1
STATE_FILE = "experiment.json"
KINDS = ("recycle", "score", "select", "train", "generate", "judge", "bench", "report")
# settings that change how fast or where a step runs, never its result: not fingerprinted
OPERATIONAL = frozenset({
    "progress", "progress_bar", "concurrency", "rpm", "tpm", "timeout", "max_retries",
    "batch_size", "prices_file", "price_in", "price_out", "api_key_env", "device",
    "prefix_cache", "force", "output_dir", "resume", "save_steps", "save_total_limit",
    "world_size", "logging_steps"})
Echo = Callable[[str], None]


class StepIncomplete(ConfigError):
    """A step ended with work left (failed calls): it stays unfinished and a rerun continues."""


@dataclass
class Step:
    name: str  # "train:original"
    kind: str
    target: str | None = None  # the arm, or "A-vs-B"
    deps: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[Path, ...] = ()
    fingerprint: str = ""


@dataclass
class PlanRow:
    step: Step
    status: str  # done | run | continue
    reason: str

    @property
    def todo(self) -> bool:
        return self.status != "done"


class Experiment:
    """A recipe bound to its experiment folder (``recipe.out``)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.out = Path(recipe.out)
        self.digests = Digests(self.out / ".rtune" / "digests.json")
        self.state = self._load_state()
        self._steps: list[Step] | None = None

    # ------------------------------------------------------------ layout
    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    def data_file(self, arm: str) -> Path:
        data = self.recipe.arms[arm].data
        return self.out / "data" / f"{data}.jsonl" if _is_source(data) else Path(data)

    def model_dir(self, arm: str) -> Path:
        return self.out / "models" / arm

    def answers(self, arm: str) -> Path:
        return self.out / "answers" / f"{arm}.jsonl"

    def answers_run(self, arm: str) -> Path:
        return self.out / "answers" / f"{arm}.run"

    def judge_dir(self, a: str, b: str) -> Path:
        return self.out / "judge" / f"{a}-vs-{b}"

    def bench_file(self, arm: str) -> Path:
        return self.out / "bench" / f"{arm}.json"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    # ------------------------------------------------------------ steps
    def steps(self) -> list[Step]:
        """Every step of the recipe with its current fingerprint."""
        if self._steps is None:
            self._steps = self._build_steps()
            fps: dict[str, str] = {}
            for s in self._steps:
                s.fingerprint = fingerprint(s, fps)
                fps[s.name] = s.fingerprint
            if self.out.is_dir():  # a dry run of a new experiment leaves no folder behind
                self.digests.save()
        return self._steps

    def _build_steps(self) -> list[Step]:
        from .prompts import load_prompt
        from .recycle import STAGE_SPECS

        r = self.recipe
        ident = self.identity
        prompt_names = sorted({STAGE_SPECS[s].prompt for s in r.recycle.stages
                               if s in STAGE_SPECS} | {"reask"})
        if "reflection-format" in r.recycle.stages:
            prompt_names.append("reflection_format")
        prompts = {n: _prompt_digest(load_prompt(n, r.recycle.prompts_dir)) for n in prompt_names}
        steps = [
            Step("recycle", "recycle", settings=_settings(r.recycle.public(), "recycle"),
                 inputs={"data": self._digest(r.data), "oracle": ident("oracle"),
                         "prompts": prompts},
                 outputs=(self.run_dir / "candidates.jsonl",)),
            Step("score", "score", deps=("recycle",), settings=_settings(r.score.to_dict(), "score"),
                 inputs={"student": ident("student")}),
            Step("select", "select", deps=("score",),
                 settings={**_settings(r.select, "select"),
                           "writes": sorted({a.data for a in r.arms.values()
                                             if _is_source(a.data)})},
                 outputs=tuple(self.data_file(a) for a in r.arms if _is_source(r.arms[a].data))),
        ]
        for name, arm in r.arms.items():
            inputs: dict[str, Any] = {"base_model": ident("base_model")}
            if not _is_source(arm.data):
                inputs["data"] = self._digest(Path(arm.data))
            steps.append(Step(f"train:{name}", "train", name,
                              deps=("select",) if _is_source(arm.data) else (),
                              settings=_settings(arm.train.to_dict(), "train"), inputs=inputs,
                              outputs=(self.model_dir(name) / "config.json",)))
        if r.test_sets:
            sets = {p.name: self._digest(p) for p in r.test_sets}
            for name in r.arms:
                steps.append(Step(f"generate:{name}", "generate", name, deps=(f"train:{name}",),
                                  settings=_settings(r.generate, "generate"),
                                  inputs={"test_sets": sets},
                                  outputs=(self.answers(name),)))
        judge_prompt = _prompt_digest(load_prompt("judge", r.judge.get("prompts_dir")))
        for a, b in r.pairs:
            steps.append(Step(f"judge:{a}-vs-{b}", "judge", f"{a}-vs-{b}",
                              deps=(f"generate:{a}", f"generate:{b}"),
                              settings=_settings(r.judge, "judge"),
                              inputs={"judge": ident("judge"), "prompt": judge_prompt},
                              outputs=(self.judge_dir(a, b) / "results.json",)))
        if r.bench is not None:
            for name in r.arms:
                steps.append(Step(f"bench:{name}", "bench", name, deps=(f"train:{name}",),
                                  settings=_settings(r.bench, "bench"),
                                  outputs=(self.bench_file(name),)))
        from .experiment_page import PAGE_VERSION

        steps.append(Step("report", "report", deps=tuple(s.name for s in steps),
                          settings={"page": PAGE_VERSION, "name": r.name},
                          outputs=(self.report_dir / "index.html",)))
        return steps

    def _digest(self, path: Path) -> str:
        """A file's digest; ``missing`` when it is not there (a dry run still plans)."""
        return self.digests.file(path) if Path(path).is_file() else "missing"

    def identity(self, role: str) -> dict[str, Any]:
        ref = {"oracle": self.recipe.oracle, "student": self.recipe.student,
               "base_model": self.recipe.base_model, "judge": self.recipe.judge_model}[role]
        return model_identity(ref.spec, ref.model, self.digests)

    # ------------------------------------------------------------ plan
    def plan(self, from_step: str | None = None) -> list[PlanRow]:
        """What a run would do: every step done, to run afresh, or to continue, and why."""
        steps = self.steps()
        forced = self._resolve_from(from_step) if from_step else set()
        recorded = self.state.get("steps", {})
        rows: list[PlanRow] = []
        running: set[str] = set()
        for s in steps:
            rec = recorded.get(s.name)
            after = [d for d in s.deps if d in running]
            if s.name in forced:
                row = PlanRow(s, "run", f"--from {from_step}")
            elif rec is None:
                row = PlanRow(s, "run", "not run yet")
            elif after:
                more = f" and {len(after) - 2} more" if len(after) > 2 else ""
                row = PlanRow(s, "run", f"after {', '.join(after[:2])}{more}")
            elif rec.get("fingerprint") != s.fingerprint:
                row = PlanRow(s, "run", _why_changed(rec.get("parts", {}), s, self._fps()))
            elif rec.get("status") != "done":
                row = PlanRow(s, "continue", "interrupted: continues where it stopped")
            else:
                missing = [p for p in s.outputs if not p.exists()]
                row = PlanRow(s, "run", f"output missing: {self.rel(missing[0])}") if missing \
                    else PlanRow(s, "done", "up to date")
            if row.todo:
                running.add(s.name)
            rows.append(row)
        return rows

    def _fps(self) -> dict[str, str]:
        return {s.name: s.fingerprint for s in self.steps()}

    def _resolve_from(self, name: str) -> set[str]:
        steps = self.steps()
        chosen = {s.name for s in steps if s.name == name or s.kind == name}
        if not chosen:
            raise ConfigError(f"--from {name}: no such step (steps: "
                              f"{', '.join(s.name for s in steps)}; or a kind: "
                              f"{', '.join(k for k in KINDS if any(s.kind == k for s in steps))})")
        return chosen

    # ------------------------------------------------------------ run
    def run(self, *, from_step: str | None = None, echo: Echo = print) -> dict[str, Any]:
        """Run what the plan says; returns ``experiment.json``'s content."""
        from .experiment_steps import RUNNERS

        with _Lock(self.out / ".rtune" / "lock"):
            self.state = self._load_state()
            plan = self.plan(from_step)
            todo = [row for row in plan if row.todo]
            self._check_models(todo)
            started = time.time()
            if todo:  # a no-op rerun leaves the record of what made the results as it is
                self._describe()
                self._save()
            for n, row in enumerate(plan, start=1):
                s = row.step
                if not row.todo:
                    echo(f"[{n}/{len(plan)}] {s.name}: up to date")
                    continue
                verb = "continuing" if row.status == "continue" else "running"
                echo(f"[{n}/{len(plan)}] {s.name}: {verb} ({row.reason})")
                self._mark(s, "running")
                t0 = time.perf_counter()
                result = RUNNERS[s.kind](self, s, fresh=row.status == "run", echo=echo)
                wall = time.perf_counter() - t0
                self._mark(s, "done", wall_s=round(wall, 2), **result)
                echo(f"[{n}/{len(plan)}] {s.name}: done in {_duration(wall)}")
            self._finish(started, [row.step.name for row in todo])
            return self.state

    def missing_models(self, todo: list[PlanRow]) -> list[tuple[str, str]]:
        """(role, why) for each model a step to run needs and this machine lacks."""
        needs = {"recycle": "oracle", "score": "student", "train": "base_model",
                 "judge": "judge"}
        out: dict[str, str] = {}
        for row in todo:
            role = needs.get(row.step.kind)
            if role is not None and role not in out:
                why = self.identity(role).get("missing")
                if why:
                    out[role] = why
        return list(out.items())

    def _check_models(self, todo: list[PlanRow]) -> None:
        """A model a step to run needs must exist before anything starts."""
        for role, why in self.missing_models(todo):
            raise self.recipe.doc.error(("models", role), why)

    # ------------------------------------------------------------ state
    def _load_state(self) -> dict[str, Any]:
        path = self.out / STATE_FILE
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}): move it away to start the "
                              "experiment afresh") from None
        return state if isinstance(state, dict) else {}

    def _save(self) -> None:
        write_text_atomic(self.out / STATE_FILE, json.dumps(
            self.state, indent=2, ensure_ascii=False, default=str) + "\n")
        self.digests.save()

    def _mark(self, s: Step, status: str, **extra: Any) -> None:
        steps = self.state.setdefault("steps", {})
        entry = {"status": status, "fingerprint": s.fingerprint,
                 "parts": {"settings": s.settings, "inputs": s.inputs,
                           "deps": {d: self._fps()[d] for d in s.deps}}}
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if status == "running":
            entry["started"] = now
        else:
            entry["started"] = steps.get(s.name, {}).get("started", now)
            entry["finished"] = now
        entry.update(extra)
        steps[s.name] = entry
        self._save()

    def _describe(self) -> None:
        from . import __version__
        from .experiment_info import package_versions

        r = self.recipe
        self.state.update({
            "format": FORMAT, "name": r.name, "description": r.description,
            "rtune_version": __version__,
            "recipe": {"path": str(r.path.resolve()),
                       "sha256": self.digests.file(r.path), "resolved": r.resolved},
            "seeds": {"train": {a.name: a.train.seed for a in r.arms.values()},
                      "generate": "greedy" if r.generate.get("temperature") == 0 else
                      f"temperature {r.generate.get('temperature')} (unseeded)",
                      "judge_bootstrap": 0},
            "models": {role: self.identity(role)
                       for role in ("oracle", "student", "base_model", "judge")},
            "prompts": {s.name: s.inputs.get("prompts") or s.inputs.get("prompt")
                        for s in self.steps() if s.kind in ("recycle", "judge")},
            "packages": package_versions(),
            "folder": str(self.out.resolve())})
        self.state.setdefault("steps", {})

    def _finish(self, started: float, ran: list[str]) -> None:
        from .experiment_info import hardware

        wall = round(time.time() - started, 2)
        runs = self.state.setdefault("runs", [])
        runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                     "wall_s": wall, "ran": ran, "argv": sys.argv[1:]})
        del runs[:-20]
        if ran:
            self.state["hardware"] = hardware()
        order = [s.name for s in self.steps()]
        steps = self.state.setdefault("steps", {})
        self.state["steps"] = {k: steps[k] for k in order if k in steps}
        self.state["wall_s"] = {k: v.get("wall_s") for k, v in self.state["steps"].items()}
        self._save()

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.out))
        except ValueError:
            return str(p)


# ---------------------------------------------------------------- helpers


def fingerprint(step: Step, fps: dict[str, str]) -> str:
    blob = json.dumps({"kind": step.kind, "target": step.target, "settings": step.settings,
                       "inputs": step.inputs, "deps": {d: fps[d] for d in step.deps}},
                      sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _settings(values: dict[str, Any], section: str) -> dict[str, Any]:
    """The settings that make a step's result: not the operational ones, and not those left at
    the stage's default (so a new stage option, added at its default, changes nothing)."""
    from .recipe import section_settings

    defaults = {k: v.default for k, v in section_settings()[section].items()}

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                        default=str)

    return {k: v for k, v in values.items()
            if k not in OPERATIONAL and not (k in defaults and same(v, defaults[k]))}


def _is_source(data: str) -> bool:
    """An arm's data made by the select step (a name), not a file of the user's (a path)."""
    return data in ARM_SOURCES or not os.path.isabs(data)


def _prompt_digest(prompt: Any) -> dict[str, str]:
    blob = json.dumps(dataclasses.asdict(prompt), sort_keys=True, default=str)
    return {"id": prompt.id, "version": prompt.version,
            "sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def _why_changed(old: dict[str, Any], step: Step, fps: dict[str, str]) -> str:
    """Which settings, inputs or earlier steps differ from the recorded run."""
    reasons = []
    before = old.get("settings", {})
    changed = sorted(k for k in set(before) | set(step.settings)
                     if before.get(k) != step.settings.get(k))
    if changed:
        reasons.append("settings changed: " + ", ".join(changed[:5]))
    inputs = old.get("inputs", {})
    diff = sorted(k for k in set(inputs) | set(step.inputs) if inputs.get(k) != step.inputs.get(k))
    if diff:
        reasons.append("input changed: " + ", ".join(diff))
    deps = old.get("deps", {})
    up = [d for d in step.deps if deps.get(d) != fps.get(d)]
    if up:
        reasons.append("earlier step changed: " + ", ".join(up))
    return "; ".join(reasons) or "changed"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


class _Lock:
    """One ``rtune run`` per experiment folder (an exclusive flock, released on any exit)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no guard
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise ConfigError(f"{self.path.parent.parent} is in use by another rtune run "
                              f"({holder or 'unknown process'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
