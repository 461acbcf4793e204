"""``rtune status``: a run's progress, failures by reason (still standing, or repaired by a
later run), tokens in/out and cost; in the batch modes its requests by state and round and
its batches (state, counts, expected cost at batch prices); with replicas, each one's calls
and failures in the last run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .batch_ledger import Ledger
from .recycle_config import STAGE_KIND
from .store import RunStore


def run_status(run_dir: str | Path) -> dict[str, Any]:
    with RunStore(run_dir, create=False) as store:
        config = store.get_meta("recycle_config") or {}
        counts = store.candidate_counts()
        sources = counts.get("orig", {})
        total_sources = sum(sources.values())
        ledger = Ledger(store, writable=False)
        by_guided = store.candidate_counts_by_guided()
        stages = {}
        for stage in config.get("stages", []):
            kind = STAGE_KIND.get(stage, stage)
            by_status = counts.get(kind, {})
            done = sum(by_status.values())
            parsed = by_status.get("ok", 0)
            stages[stage] = {"kind": kind, "done": done, "by_status": by_status,
                             "parse_success_rate": parsed / done if done else None,
                             "guided": guided_split(by_guided.get(kind, {}))}
        return {
            "run_dir": str(run_dir), "input": store.get_meta("input"),
            "oracle": config.get("oracle"), "model": config.get("model") or None,
            "input_records": store.get_meta("input_records"), "records_seen": total_sources,
            "multi_turn_passed_through": sources.get("skipped", 0),
            "stages": stages, "calls": store.call_totals(),
            "failures": store.failure_summary(), "fallbacks": store.fallback_reasons(),
            "invalid_input": store.invalid(),
            "mode": config.get("mode", "online"), "batch": ledger.summary(),
            "batches": [_batch(b) for b in ledger.batches()],
            "replicas": store.get_meta("replicas"),
            "guided": store.get_meta("guided"),
        }


def guided_split(forms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Parse success of a stage's candidates per guided form (``off``: unguided), and how many
    had a repeating text ended by the loop guard."""
    out = {}
    for form, counts in sorted(forms.items()):
        done = sum(counts["by_status"].values())
        ok = counts["by_status"].get("ok", 0)
        out[form] = {"done": done, "ok": ok, "parse_success_rate": ok / done if done else None,
                     "looped": counts["looped"]}
    return out


def _batch(b: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "kind", "state", "api_id", "api_status", "lines", "counts", "expected_cost",
            "cost", "reason", "path")
    return {k: b[k] for k in keep}
