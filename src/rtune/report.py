"""``rtune report``: statistics, figures and a record browser for runs or datasets.

Writes ``index.html`` (self-contained), ``stats.json`` and ``figures/*.png`` into the output
folder. Runs that would make the page very large keep record text in ``data/chunk-N.js``
files beside it instead (loaded on demand; the folder stays viewable offline).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import write_text_atomic
from .records import Record
from .report_assets import PAGE
from .report_figures import all_figures
from .score_config import SUMMARY_FIELDS
from .stats import DEFAULT_COHERENCE_SAMPLE, Input, Stats, gather

CHUNK_ROWS = 200
ALIGN_MODES = ("auto", "id", "output", "position")
DEFAULT_INLINE_LIMIT_MB = 48.0
CAPTIONS = {
    "lengths": "Instruction and response length distributions per dataset / candidate kind",
    "ifd_rifd": "IFD vs r-IFD of every scored candidate, coloured by the selection decision",
    "coherence": "Instruction-response coherence",
    "failures": "Parse fallbacks and failures by reason",
}


@dataclass
class ReportResult:
    out_dir: Path
    index: Path
    stats_json: Path
    figures: list[Path]
    records: int
    chunk_files: int
    stats: Stats


def build_report(paths: Sequence[str | Path], out_dir: str | Path, *,
                 tokenizer: str | None = None, coherence: bool = True,
                 coherence_sample: int = DEFAULT_COHERENCE_SAMPLE,
                 inline_limit_mb: float = DEFAULT_INLINE_LIMIT_MB,
                 title: str | None = None, align: str = "auto") -> ReportResult:
    """Measure ``paths`` (run directories and/or dataset files) and write the report.

    ``align`` pairs the records of several datasets in the browser: by ``id``, by identical
    ``output`` text, by ``position``, or ``auto`` (id if every record has a unique one, else
    output if most outputs match, else position)."""
    stats = gather(paths, tokenizer=tokenizer, coherence=coherence,
                   coherence_sample=coherence_sample)
    return write_report(stats, out_dir, inline_limit_mb=inline_limit_mb, title=title,
                        align=align)


def write_report(stats: Stats, out_dir: str | Path, *,
                 inline_limit_mb: float = DEFAULT_INLINE_LIMIT_MB, title: str | None = None,
                 chunk_rows: int = CHUNK_ROWS, align: str = "auto") -> ReportResult:
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    stats_dict = stats.to_dict()
    stats_path = out / "stats.json"
    write_text_atomic(stats_path, json.dumps(stats_dict, indent=2, ensure_ascii=False))

    figures = all_figures(stats)
    fig_paths = []
    for name, png in figures.items():
        p = out / "figures" / f"{name}.png"
        p.write_bytes(png)
        fig_paths.append(p)

    index, rows, note = browse_data(stats, align)
    chunks = [_safe_json(rows[i:i + chunk_rows]) for i in range(0, len(rows), chunk_rows)]
    index["chunk"] = chunk_rows
    inline = sum(len(c) for c in chunks) <= inline_limit_mb * 1e6
    data_dir = out / "data"
    for old in data_dir.glob("chunk-*.js") if data_dir.exists() else []:
        old.unlink()
    if not inline:
        data_dir.mkdir(exist_ok=True)
        for n, c in enumerate(chunks):
            write_text_atomic(data_dir / f"chunk-{n}.js", f"window.rtuneChunk({n}, {c});\n")

    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    page = env.from_string(PAGE).render(
        title=title or "rtune report: " + ", ".join(i.name for i in stats.inputs),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        stats=stats_dict, num=_num, browse_note=note, index_json=_safe_json(index),
        chunks=chunks if inline else [],
        figures=[{"name": n, "caption": CAPTIONS[n], "b64": base64.b64encode(p).decode()}
                 for n, p in figures.items()])
    index_path = out / "index.html"
    write_text_atomic(index_path, page)
    return ReportResult(out, index_path, stats_path, fig_paths, len(rows),
                        0 if inline else len(chunks), stats)


def _num(summary: Any, key: str, digits: int = 1) -> str:
    if not isinstance(summary, dict) or summary.get(key) is None:
        return "–"
    return f"{summary[key]:.{digits}f}"


def _safe_json(obj: Any) -> str:
    """JSON that can sit inside a <script> element (no '<', '>' or '&' characters)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- browser data


def _variant(label: str, rec: Record, scores: dict[str, Any] | None) -> dict[str, Any]:
    v: dict[str, Any] = {"k": label, "ins": rec.instruction, "out": rec.output}
    if rec.input:
        v["inp"] = rec.input
    for key, val in (("raw", rec.raw), ("st", rec.parse_status), ("fr", rec.fallback_reason),
                     ("om", rec.oracle_model), ("pid", rec.prompt_id)):
        if val:
            v[key] = val
    if scores:
        v["sc"] = scores
    return v


def _coherence_lookup(stats: Stats) -> dict[tuple[str, str, int], float]:
    out = {}
    for gs in stats.groups:
        g = gs.group
        for rec, c in zip(g.records, gs.coherence):
            if c is not None:
                out[(g.dataset, g.name, rec.source_index)] = round(c, 4)
    return out


def browse_data(stats: Stats, align: str = "auto") -> tuple[dict[str, Any],
                                                             list[dict[str, Any]], str | None]:
    """The page's filter index and its rows (one per source record or aligned position)."""
    runs = [i for i in stats.inputs if i.run is not None]
    coh = _coherence_lookup(stats)
    note = None
    if runs:
        if len(stats.inputs) > 1:
            note = f"The record browser shows run {runs[0].name}; the others are in the tables."
        return (*_run_rows(runs[0], coh), note)
    index, rows, how = _dataset_rows(stats.inputs, coh, align)
    if len(stats.inputs) > 1:
        note = f"Records of the datasets are paired by {how}."
    return index, rows, note


def _index(mode: str, kinds: list[str], meta: list[list[Any]],
           reasons: Counter[str]) -> dict[str, Any]:
    names = sorted(reasons)
    ids = {r: i for i, r in enumerate(names)}
    for m in meta:
        m[3] = [ids[r] for r in m[3]]
    return {"mode": mode, "kinds": kinds, "meta": meta, "reasons": names,
            "reason_counts": [reasons[r] for r in names]}


def _run_rows(inp: Input, coh: dict) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = inp.run
    assert run is not None
    kinds = run.kinds
    indices = sorted(set().union(*(set(c) for c in run.candidates.values()), run.selection))
    rows, meta = [], []
    reasons: Counter[str] = Counter()
    for idx in indices:
        variants, mask, why = [], 0, []
        for kind in kinds:
            rec = run.record(idx, kind)
            if rec is None:
                continue
            sc = {k: run.scores.get((idx, kind), {}).get(k) for k in SUMMARY_FIELDS}
            sc = {k: v for k, v in sc.items() if v is not None}
            c = coh.get((inp.name, kind, idx))
            if c is not None:
                sc["coherence"] = c
            variants.append(_variant(kind, rec, sc))
            mask |= 1 << kinds.index(kind)
            if rec.fallback_reason:
                why.append(f"{kind}: {rec.fallback_reason}")
            elif rec.parse_status == "failed":
                why.append(f"{kind}: failed")
        if not variants:
            continue
        d = run.selection.get(idx)
        decision = "" if d is None else (d.get("kept") or "-")
        reasons.update(why)
        meta.append([idx, mask, decision, why])
        rows.append({"i": idx, "v": variants, "d": d})
    return _index("run", kinds, meta, reasons), rows


def _pairing(recs: list[list[Record]], align: str) -> str:
    if align not in ALIGN_MODES:
        from .errors import ConfigError

        raise ConfigError(f"unknown --align '{align}' (choose from {', '.join(ALIGN_MODES)})")
    if align != "auto":
        return align
    if all(r.source_id for rs in recs for r in rs) and all(
            len({r.source_id for r in rs}) == len(rs) for rs in recs):
        return "id"
    outputs = [{r.output for r in rs} for rs in recs]
    if len(recs) > 1 and all(len(o) >= 0.95 * len(rs) for o, rs in zip(outputs, recs)):
        shared = len(set.intersection(*outputs))
        if shared >= 0.5 * min(len(o) for o in outputs):
            return "output"
    return "position"


def _dataset_rows(inputs: Sequence[Input], coh: dict, align: str = "auto",
                  ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    kinds = [i.name for i in inputs]
    recs = [i.groups[0].records for i in inputs]
    scores = [i.groups[0].scores for i in inputs]
    how = _pairing(recs, align)
    key_of = {"id": lambda r: r.source_id, "output": lambda r: r.output,
              "position": lambda r: r.source_index}[how]
    keyed: list[dict[Any, int]] = []
    for rs in recs:  # repeated keys pair up in order: (key, 0), (key, 1), ...
        seen_n: Counter[Any] = Counter()
        table = {}
        for n, r in enumerate(rs):
            k = key_of(r)
            table[(k, seen_n[k])] = n
            seen_n[k] += 1
        keyed.append(table)
    order: list[Any] = []
    seen: set[Any] = set()
    for table in keyed:
        for key in table:
            if key not in seen:
                seen.add(key)
                order.append(key)
    rows, meta = [], []
    flags: Counter[str] = Counter()
    for pos, key in enumerate(order):
        variants, mask, why = [], 0, []
        for d, (table, inp) in enumerate(zip(keyed, inputs)):
            n = table.get(key)
            if n is None:
                if len(inputs) > 1:
                    why.append(f"missing in {inp.name}")
                continue
            rec = recs[d][n]
            sc = dict(scores[d][n])
            c = coh.get((inp.name, "all", rec.source_index))
            if c is not None:
                sc["coherence"] = c
            variants.append(_variant(inp.name, rec, sc))
            mask |= 1 << d
        base = variants[0]
        if any(v["ins"] != base["ins"] or v.get("inp") != base.get("inp") for v in variants):
            why.append("instruction differs")
        if any(v["out"] != base["out"] for v in variants):
            why.append("response differs")
        flags.update(why)
        label = key[0] if how == "id" and not key[1] else pos
        meta.append([label, mask, "", why])
        rows.append({"i": label, "v": variants, "d": None})
    return _index("datasets", kinds, meta, flags), rows, how
