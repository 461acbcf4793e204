"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from .stats import GroupStats, Stats, kept_kinds

DECISION_COLORS = {"kept": "#2a9d3a", "not kept": "#9aa4b1", "source dropped": "#d1495b",
                   "no decision": "#3b6fb6"}


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (9, 3.6)):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes[0]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _label(gs: GroupStats, many: bool) -> str:
    g = gs.group
    return f"{g.dataset}: {g.name}" if many and g.name != "all" else (
        g.dataset if g.name == "all" else g.name)


def length_figure(stats: Stats) -> bytes | None:
    groups = [g for g in stats.groups if g.group.records]
    if not groups:
        return None
    import numpy as np

    many = len(stats.inputs) > 1
    fig, (a, b) = _figure(1, 2)
    for ax, attr, title in ((a, "instruction_len", "instruction"), (b, "response_len",
                                                                     "response")):
        top = max(max(getattr(g, attr), default=1) for g in groups)
        bins = np.linspace(0, max(top, 1) * 1.001, 40)
        for g in groups:
            vals = getattr(g, attr)
            ax.hist(vals, bins=bins, histtype="step", linewidth=1.6, density=True,
                    label=f"{_label(g, many)} (mean {np.mean(vals):.1f})")
        ax.set_title(f"{title} length")
        ax.set_xlabel(stats.lengths.unit)
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def coherence_figure(stats: Stats) -> bytes | None:
    groups = [(g, [c for c in g.coherence if c is not None]) for g in stats.groups]
    groups = [(g, v) for g, v in groups if v]
    if not groups:
        return None
    import numpy as np

    many = len(stats.inputs) > 1
    fig, (ax,) = _figure(size=(7, 3.6))
    bins = np.linspace(-0.2, 1.0, 37)
    for g, vals in groups:
        ax.hist(vals, bins=bins, histtype="step", linewidth=1.6, density=True,
                label=f"{_label(g, many)} (mean {np.mean(vals):.2f})")
    ax.set_title("instruction-response coherence (cosine, all-MiniLM-L6-v2)")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def candidate_decision(selection: dict[int, dict[str, Any]], idx: int, kind: str) -> str:
    d = selection.get(idx)
    if d is None:
        return "no decision"
    if kind in kept_kinds(d):
        return "kept"
    return "not kept" if d.get("kept") else "source dropped"


def ifd_figure(stats: Stats) -> bytes | None:
    points: dict[str, tuple[list[float], list[float]]] = {}
    for inp in stats.inputs:
        if inp.run is None:
            continue
        for (idx, kind), sc in inp.run.scores.items():
            x, y = sc.get("ifd_ppl"), sc.get("rifd_ppl")
            if x is None or y is None:
                continue
            dec = candidate_decision(inp.run.selection, idx, kind)
            xs, ys = points.setdefault(dec, ([], []))
            xs.append(x)
            ys.append(y)
    if not points:
        return None
    fig, (ax,) = _figure(size=(6.5, 5))
    for dec in DECISION_COLORS:
        if dec in points:
            xs, ys = points[dec]
            ax.scatter(xs, ys, s=9, alpha=0.6, color=DECISION_COLORS[dec],
                       label=f"{dec} ({len(xs)})")
    ax.axvline(1, color="k", lw=0.6, ls="--")
    ax.axhline(1, color="k", lw=0.6, ls="--")
    ax.set_xlabel("IFD (ppl)")
    ax.set_ylabel("r-IFD (ppl)")
    ax.set_title("candidates: IFD vs r-IFD by selection decision")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def failure_figure(stats: Stats) -> bytes | None:
    counts: Counter[str] = Counter()
    many = len(stats.inputs) > 1
    for inp in stats.inputs:
        if inp.run is None:
            continue
        prefix = f"{inp.name}: " if many else ""
        for kind, recs in inp.run.candidates.items():
            for r in recs.values():
                if r.fallback_reason:
                    counts[f"{prefix}{kind}: {r.fallback_reason}"] += 1
                elif r.parse_status == "failed":
                    counts[f"{prefix}{kind}: failed"] += 1
        for reason, n in inp.run.call_failures.items():
            counts[f"{prefix}call: {reason}"] += n
    if not counts:
        return None
    items = counts.most_common(25)[::-1]
    fig, (ax,) = _figure(size=(8, 0.8 + 0.32 * len(items)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#d1495b")
    ax.set_xlabel("records")
    ax.set_title("parse fallbacks, failures and failed calls by reason")
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def all_figures(stats: Stats) -> dict[str, bytes]:
    """name -> PNG for each figure that has data (partial runs get fewer)."""
    out = {}
    for name, fn in (("lengths", length_figure), ("ifd_rifd", ifd_figure),
                     ("coherence", coherence_figure), ("failures", failure_figure)):
        png = fn(stats)
        if png is not None:
            out[name] = png
    return out
