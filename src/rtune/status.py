"""``rtune status``: a run's progress, failures by reason (still standing, or repaired by a
later run), tokens in/out and cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .recycle_config import STAGE_KIND
from .store import RunStore


def run_status(run_dir: str | Path) -> dict[str, Any]:
    with RunStore(run_dir, create=False) as store:
        config = store.get_meta("recycle_config") or {}
        counts = store.candidate_counts()
        sources = counts.get("orig", {})
        total_sources = sum(sources.values())
        stages = {}
        for stage in config.get("stages", []):
            kind = STAGE_KIND.get(stage, stage)
            by_status = counts.get(kind, {})
            done = sum(by_status.values())
            parsed = by_status.get("ok", 0)
            stages[stage] = {"kind": kind, "done": done, "by_status": by_status,
                             "parse_success_rate": parsed / done if done else None}
        return {
            "run_dir": str(run_dir), "input": store.get_meta("input"),
            "oracle": config.get("oracle"), "model": config.get("model") or None,
            "input_records": store.get_meta("input_records"), "records_seen": total_sources,
            "multi_turn_passed_through": sources.get("skipped", 0),
            "stages": stages, "calls": store.call_totals(),
            "failures": store.failure_summary(), "fallbacks": store.fallback_reasons(),
            "invalid_input": store.invalid(),
        }
