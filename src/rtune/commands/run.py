"""Run a whole Reflection-Tuning experiment from a recipe (YAML): recycle -> score -> select ->
train each arm -> generate answers -> judge each pair -> benchmarks -> report.

Everything goes into one experiment folder (default runs/<recipe name>): experiment.json
(the recipe as resolved, versions, seeds, model and file hashes, what each step made, wall
time per step) and report/index.html (the arms side by side). A rerun does only what is not
up to date: a step whose settings, inputs and earlier steps are unchanged is skipped, a
changed one is redone with every step after it, a killed one continues where it stopped.
Recipe keys are the stages' own option names (see recipes/*.yaml).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import print_json

HELP = "run a whole experiment from a recipe (resumable, reproducible)"
EXAMPLES = """examples:
  rtune run recipes/quickstart.yaml                    # embedded 135M model, CPU, minutes
  rtune run recipes/reflection-tuning.yaml --dry-run   # plan, paid calls and cost; no call
  rtune run my.yaml --from train --set train.learning_rate=1e-5   # redo training onward
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (done / to run / to continue, and why) and the paid "
                   "oracle and judge calls with their cost; run nothing")
    p.add_argument("--from", dest="from_step", default=None, metavar="STEP",
                   help="redo from this step (a kind: recycle, score, select, train, generate, "
                   "judge, bench, report; or one step: train:ARM) and every step after it")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.learning_rate=1e-5 or --set "
                   "data=alpaca.json (repeatable; the value is read as YAML)")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="experiment folder (default: the recipe's out, else runs/<name>)")
    p.add_argument("--json", action="store_true", help="print the plan / result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..experiment import Experiment
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.overrides, out=args.out,
                         missing_ok=args.dry_run)
    exp = Experiment(recipe)
    if args.dry_run:
        return _dry_run(exp, args)
    echo = (lambda m: print(m, file=sys.stderr)) if args.json else print
    state = exp.run(from_step=args.from_step, echo=echo)
    if args.json:
        print_json(state)
        return 0
    ran = state.get("runs", [{}])[-1].get("ran", [])
    page = exp.report_dir / "index.html"
    print(f"experiment {exp.out}: {len(ran)} step(s) run, "
          f"{len(state.get('steps', {})) - len(ran)} up to date")
    _print_results(state)
    print(f"page: {page}\nrecord: {exp.out / 'experiment.json'}")
    return 0


def _dry_run(exp: Any, args: argparse.Namespace) -> int:
    from ..experiment_cost import paid_calls

    plan = exp.plan(args.from_step)
    calls = paid_calls(exp, plan)
    models = [f"{exp.recipe.doc.where(('models', role))}: models.{role}: {why}"
              for role, why in exp.missing_models([r for r in plan if r.todo])]
    problems = [*exp.recipe.problems, *models, *calls["problems"]]
    if args.json:
        print_json({"experiment": str(exp.out), "plan": [
            {"step": r.step.name, "status": r.status, "reason": r.reason,
             "fingerprint": r.step.fingerprint} for r in plan], "calls": calls,
            "missing": problems})
        return 0
    print(f"experiment {exp.out} (recipe {exp.recipe.path}): plan")
    width = max(len(r.step.name) for r in plan)
    for r in plan:
        status = {"done": "done", "run": "run", "continue": "continue"}[r.status]
        print(f"  {r.step.name:<{width}}  {status:<8}  {r.reason}")
    print("calls the steps to run make:" if calls["steps"] else "no oracle or judge calls to make")
    for name, c in calls["steps"].items():
        cost = (f"~${c['cost']:.2f} (at most ${c['cost_max']:.2f})" if c["paid"]
                else "local model, no cost")
        print(f"  {name:<{width}}  {c['model']}: {c['calls']:,} calls, {c['tokens_in']:,} "
              f"tokens in, ~{c['tokens_out']:,} out (at most {c['tokens_out_max']:,}); {cost}")
    paid = [c for c in calls["steps"].values() if c["paid"]]
    if paid:
        print(f"  total paid: ~${sum(c['cost'] for c in paid):.2f} (at most "
              f"${sum(c['cost_max'] for c in paid):.2f}); calls already in the stores are "
              "replayed free")
    for p in problems:
        print(f"missing before a real run: {p}")
    return 0


def _print_results(state: dict[str, Any]) -> None:
    for name, s in state.get("steps", {}).items():
        summary = s.get("summary") or {}
        if name.startswith("judge:") and summary.get("overall"):
            o = summary["overall"]
            score = "-" if o.get("score") is None else f"{o['score']:.3f}"
            ci = f" [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]" if o.get("ci95") else ""
            print(f"  {summary.get('a')} vs {summary.get('b')}: W {o['win']} T {o['tie']} "
                  f"L {o['loss']} (failed {o['failed']}), score {score}{ci}")
