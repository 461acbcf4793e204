"""``--dry-run``: how many oracle calls a recycling run makes, its tokens and cost, calling
nothing. Streams the input, so memory stays flat on any dataset size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .prompts import load_prompt
from .recycle import STAGE_SPECS, Recycler, iter_input, validate_input
from .recycle_config import STAGE_KIND, RecycleConfig
from .store import RunStore

CHARS_PER_TOKEN = 4  # no tokenizer for a remote model; the usual English average


def _tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def estimate(input_path: str | Path, config: RecycleConfig,
             run_dir: str | Path | None = None) -> dict[str, Any]:
    """Calls, tokens in (prompt), tokens out (typical and at most) and cost per stage.

    Calls already paid for in ``run_dir`` are not counted again. Re-asks are not counted
    (they happen only for replies that miss a marker). ``cost_batch``: the same tokens at
    Batch API prices (half); ``cost_mode``: the cost in the config's mode.
    """
    validate_input(input_path, config)
    store = (RunStore(run_dir, create=False)
             if run_dir and (Path(run_dir) / "rtune.sqlite").exists() else None)
    names = {**{name: spec.prompt for name, spec in STAGE_SPECS.items()},
             "reflection-format": "reflection_format"}
    prompts = {name: load_prompt(prompt, config.prompts_dir)
               for name, prompt in names.items() if name in config.stages}
    prices = config.prices()
    rows = {s: {"calls": 0, "tokens_in": 0, "tokens_out": 0, "tokens_out_max": 0}
            for s in config.stages if s in prompts}
    records = skipped = 0
    for rec in iter_input(input_path, config):
        records += 1
        if rec.is_multi_turn:
            skipped += 1
            continue
        for stage, row in rows.items():
            if stage == "compress" and not rec.input.strip():
                continue
            if store is not None and store.get_candidate(rec.source_index,
                                                         STAGE_KIND[stage]) is not None:
                continue
            messages = prompts[stage].messages(with_example=config.use_example,
                                               **Recycler._variables(rec, stage))
            tin = sum(_tokens(m["content"]) + 4 for m in messages)
            answer = _tokens(rec.output + rec.instruction)
            typical = min(config.max_tokens, 2 * answer + 150)
            if stage == "both":  # reflects the ins result, whose answer is typically longer
                tin += typical
            row["calls"] += 1
            row["tokens_in"] += tin
            row["tokens_out"] += typical
            row["tokens_out_max"] += config.max_tokens
    if store is not None:
        store.close()
    for row in rows.values():
        row["cost"] = prices.cost(config.model_name, row["tokens_in"], row["tokens_out"])
        row["cost_max"] = prices.cost(config.model_name, row["tokens_in"], row["tokens_out_max"])
        row["cost_batch"] = prices.cost(config.model_name, row["tokens_in"], row["tokens_out"],
                                        batch=True)
    total = {k: sum(r[k] for r in rows.values())
             for k in ("calls", "tokens_in", "tokens_out", "tokens_out_max", "cost", "cost_max",
                       "cost_batch")}
    total["cost_mode"] = total["cost_batch"] if config.mode == "batch" else total["cost"]
    return {"records": records, "multi_turn_passed_through": skipped, "model": config.model_name,
            "mode": config.mode, "stages": rows, "total": total,
            "price_per_1M": dict(zip(("in", "out"), prices.lookup(config.model_name)))}
