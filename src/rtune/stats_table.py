"""The statistics as rich tables for the terminal (``rtune stats``)."""

from __future__ import annotations

from typing import Any

from rich.console import Group as RichGroup
from rich.table import Table


def _n(summary: Any, key: str = "mean", digits: int = 1) -> str:
    if not isinstance(summary, dict) or summary.get(key) is None:
        return "–"
    return f"{summary[key]:.{digits}f}"


def _three(summary: Any) -> str:
    return " / ".join(_n(summary, k) for k in ("mean", "median", "p90"))


def stats_renderable(d: dict[str, Any]) -> RichGroup:
    """Group table (lengths, coherence, scores), then per-run oracle/parse/selection tables."""
    unit = d["length_unit"]
    t = Table(title=f"rtune stats (lengths in {unit} of {d['tokenizer']}: mean / median / p90)",
              title_justify="left")
    t.add_column("dataset")
    t.add_column("group")
    for col in ("records", "instruction", "response", "coherence", "IFD", "r-IFD"):
        t.add_column(col, justify="right")
    for g in d["groups"]:
        il, rl = g["instruction_len"], g["response_len"]
        t.add_row(g["dataset"], g["group"], str(g["count"]), _three(il), _three(rl),
                  _n(g.get("coherence"), digits=3), _n(g.get("ifd_ppl"), digits=3),
                  _n(g.get("rifd_ppl"), digits=3))
    parts: list[Any] = [t]
    for name, run in d["runs"].items():
        o = run["oracle"]
        r = Table(title=f"run {name}", title_justify="left")
        for col in ("sources", "invalid", "oracle calls", "tokens in", "tokens out", "cost",
                    "failed calls", "scored"):
            r.add_column(col, justify="right")
        r.add_row(str(run["sources"]), str(run["invalid_inputs"]), str(o["calls"]),
                  str(o["tokens_in"]), str(o["tokens_out"]), f"{o['cost']:.4f}",
                  str(sum(run["call_failures"].values())), str(run["scored"]))
        parts.append(r)
        if run["parse"]:
            p = Table(title="parse results", title_justify="left")
            for col in ("kind", "candidates", "fallback", "failed", "parse ok", "reasons"):
                p.add_column(col, justify="left" if col in ("kind", "reasons", "parse ok")
                             else "right")
            for kind, v in run["parse"].items():
                reasons = "; ".join(f"{k} {c['count']} ({100 * c['rate']:.1f}%)"
                                    for k, c in v["reasons"].items())
                split = "; ".join(f"{'unguided' if f == 'off' else 'guided ' + f} "
                                  f"{g['ok']}/{g['candidates']}"
                                  + (f" ({g['looped']} looped)" if g.get("looped") else "")
                                  for f, g in (v.get("guided") or {}).items())
                p.add_row(kind, str(v["candidates"]), f"{100 * v['fallback_rate']:.1f}%",
                          f"{100 * v['failure_rate']:.1f}%", split, reasons)
            parts.append(p)
        sel = run["selection"]
        if sel:
            s = Table(title="selection", title_justify="left")
            for col in ("decisions", "dropped", "kept", "cases"):
                s.add_column(col)
            s.add_row(str(sel["decisions"]), str(sel["dropped"]),
                      ", ".join(f"{k} {c}" for k, c in sel["kept"].items()),
                      ", ".join(f"{k} {c}" for k, c in sel["cases"].items()))
            parts.append(s)
    parts.extend(f"[dim]note: {n}[/dim]" for n in d["notes"])
    return RichGroup(*parts)
