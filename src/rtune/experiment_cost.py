"""The paid calls a plan implies: the oracle's (recycle) and the judge's, with tokens and cost.

Recycle calls come from :func:`rtune.estimate.estimate` (the same count ``rtune recycle
--dry-run`` gives). Judge calls are two per question per pair (both orders); their prompt is
the packaged judge prompt with the question and two answers of typical length (answers are
not written yet: typical = min(max_tokens, 2 x question tokens + 150), at most
``generate.max_tokens``), the reply typically 200 tokens and at most ``judge.max_tokens``.
Local models make calls but cost nothing. Re-asks are not counted; calls already paid are
replayed from the stores and cost nothing either, so these are upper estimates for a step that
is redone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import RtuneError
from .estimate import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from .experiment import Experiment, PlanRow

TYPICAL_JUDGE_REPLY = 200


def _tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def paid_calls(exp: Experiment, plan: list[PlanRow]) -> dict[str, Any]:
    """Per step to run: calls, tokens in/out (typical and at most), cost, and whether paid."""
    rows: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for row in plan:
        if not row.todo:
            continue
        s = row.step
        try:
            if s.kind == "recycle":
                rows[s.name] = _recycle(exp, continuing=row.status == "continue")
            elif s.kind == "judge":
                rows[s.name] = _judge(exp)
        except (OSError, ValueError, RtuneError) as e:  # a missing input: the plan still prints
            problems.append(f"{s.name}: cannot estimate ({e})")
    keys = ("calls", "tokens_in", "tokens_out", "tokens_out_max", "cost", "cost_max")
    total = {k: sum(r[k] for r in rows.values()) for k in keys}
    return {"steps": rows, "total": total, "problems": problems}


def _recycle(exp: Experiment, *, continuing: bool) -> dict[str, Any]:
    from .estimate import estimate

    r = exp.recipe
    run_dir = exp.run_dir if continuing else None
    est = estimate(r.data, r.recycle, run_dir)
    return {**{k: est["total"][k] for k in ("calls", "tokens_in", "tokens_out",
                                             "tokens_out_max", "cost", "cost_max")},
            "model": est["model"], "paid": r.oracle.is_endpoint, "records": est["records"],
            "price_per_1M": est["price_per_1M"]}


def _judge(exp: Experiment) -> dict[str, Any]:
    from .generate import load_questions
    from .oracle.pricing import Prices
    from .prompts import load_prompt

    r = exp.recipe
    ref = r.judge_model
    model = ref.model or ref.spec
    prompt = load_prompt("judge", r.judge.get("prompts_dir"))
    questions = load_questions(r.test_sets, r.generate.get("limit"))
    answer_max = int(r.generate.get("max_tokens") or 0)
    reply_max = int(r.judge.get("max_tokens") or 0)
    tin = tin_max = 0
    for q in questions:
        empty = prompt.messages(question=q.instruction, answer_1="", answer_2="")
        base = sum(_tokens(m["content"]) + 4 for m in empty)
        typical = min(answer_max, 2 * _tokens(q.instruction) + 150)
        tin += 2 * (base + 2 * typical)
        tin_max += 2 * (base + 2 * answer_max)
    calls = 2 * len(questions)
    tout = calls * min(TYPICAL_JUDGE_REPLY, reply_max)
    tout_max = calls * reply_max
    prices = Prices.load(r.judge.get("prices_file"), model=model,
                         price_in=r.judge.get("price_in"), price_out=r.judge.get("price_out"))
    return {"calls": calls, "tokens_in": tin, "tokens_out": tout, "tokens_out_max": tout_max,
            "cost": prices.cost(model, tin, tout), "cost_max": prices.cost(model, tin_max,
                                                                           tout_max),
            "model": model, "paid": ref.is_endpoint, "questions": len(questions),
            "price_per_1M": dict(zip(("in", "out"), prices.lookup(model)))}
