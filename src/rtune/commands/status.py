"""Show a run's progress: candidates per stage and parse status, oracle failures by reason
(still standing, or repaired by a later run), fallback reasons, invalid input records, tokens
in/out and cost."""

from __future__ import annotations

import argparse

from ._common import print_json

HELP = "progress, failures, tokens and cost of a run"


EXAMPLES = """\
examples:
  rtune status runs/alpaca          # progress, parse success, failures standing / repaired, cost
  rtune status runs/alpaca --json   # the same, machine-readable
  watch -n 10 rtune status runs/alpaca   # follow a run from another terminal
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..status import run_status

    s = run_status(args.run_dir)
    if args.json:
        print_json(s)
        return 0
    total = s["input_records"]
    print(f"run {s['run_dir']}  input {s['input']}")
    if s.get("mode") in ("export", "import"):
        print(f"oracle: batch files (export/import) for {s['model']}")
    else:
        print(f"oracle {s['oracle']} {s['model'] or ''}".rstrip())
    print(f"records: {s['records_seen']}/{total if total is not None else '?'} started, "
          f"{s['multi_turn_passed_through']} multi-turn passed through")
    for stage, st in s["stages"].items():
        rate = st["parse_success_rate"]
        rate_s = f"{rate:.0%}" if rate is not None else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(st["by_status"].items()))
        print(f"  {stage:12s} {st['done']:6d} done  parse ok {rate_s:>4s}  ({statuses})")
        guided = st.get("guided") or {}
        if set(guided) - {"off"}:  # parse success split by guided / unguided replies
            print("  " + " " * 12 + "  " + ", ".join(
                f"{'unguided' if form == 'off' else 'guided ' + form}: {g['ok']}/{g['done']} ok"
                + (f" ({g['looped']} with a repeating text ended)" if g.get("looped") else "")
                for form, g in guided.items()))
    c = s["calls"]
    print(f"oracle calls {c['calls']}, tokens in {c['tokens_in']:,}, out {c['tokens_out']:,}, "
          f"cost ${c['cost']:.4f}")
    for state, label in (("standing", "call failures still standing (a rerun retries them)"),
                         ("repaired", "call failures repaired by a later run")):
        if s["failures"][state]:
            print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in
                                           sorted(s["failures"][state].items())))
    if s["fallbacks"]:
        print("fallbacks and re-asks (by reason):")
        for reason, n in list(s["fallbacks"].items())[:15]:
            print(f"  {n:6d}  {reason}")
    if s.get("guided"):
        g = dict(s["guided"])
        print(f"guided output ({g.pop('mode', '?')}): " + (", ".join(
            f"{k} {v}" for k, v in g.items()) or "nothing learnt from the endpoint"))
    _print_batches(s)
    _print_replicas(s.get("replicas"))
    if s["invalid_input"]:
        print(f"invalid input records ({len(s['invalid_input'])}):")
        for e in s["invalid_input"][:20]:
            print(f"  {e['path']} line {e['line']} record {e['record']} "
                  f"field {e['field']}: {e['message']}")
    return 0


def _print_batches(s: dict) -> None:
    batch = s.get("batch") or {}
    if not batch:
        return
    states = ", ".join(f"{k} {v}" for k, v in sorted(batch["requests"].items()))
    via = "the Batch API" if s.get("mode") == "batch" else "batch files (export/import)"
    print(f"batch requests, through {via}: {states}")
    for rnd, stages in batch["rounds"].items():
        print(f"  round {rnd}: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    labels = {"resubmitting": "went back to be sent again", "resubmitted": "sent again",
              "repaired": "answered after failing", "failed": "failed (a rerun with "
              "--fallback-online runs them online)"}
    for label, reasons in batch["reasons"].items():
        print(f"  {labels.get(label, label)}: " +
              ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if batch.get("answered_by"):
        print("  answered by: " + ", ".join(f"{k} {v}" for k, v in
                                            sorted(batch["answered_by"].items())))
    rows = s.get("batches") or []
    if rows:
        expected = sum(b["expected_cost"] for b in rows)
        print(f"batches ({len(rows)}; expected ${expected:.4f} at batch prices, "
              f"${sum(b['cost'] for b in rows):.4f} so far):")
    for b in rows[-20:]:
        counts = b["counts"] or {}
        done = (f" {counts.get('completed', 0)}/{counts.get('total', 0)} done, "
                f"{counts.get('failed', 0)} failed" if counts else "")
        name = b["api_id"] or b["path"] or b["id"]
        state = b["state"] + (f" ({b['api_status']})" if b["api_status"] else "")
        print(f"  {name}  {state}  {b['lines']} lines{done}  expected "
              f"${b['expected_cost']:.4f}, cost ${b['cost']:.4f}" +
              (f"  [{b['reason']}]" if b["reason"] else ""))
    if len(rows) > 20:
        print(f"  (the last 20 of {len(rows)}; --json lists all)")


def _print_replicas(replicas: list | None) -> None:
    if not replicas:
        return
    print("replicas (last run):")
    for r in replicas:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items()))
        print(f"  {r['url']}  {r['calls']} calls" +
              (f", failures: {failures}" if failures else "") +
              (f"  (last error: {r['last_error']})" if r.get("last_error") else ""))
