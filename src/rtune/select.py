"""Choose which candidate of each source record to train on, from the student's scores.

Policies:

- ``selective`` (Selective Reflection-Tuning), per source with candidates orig, ins,
  res, both:
  1. IFD(ins) > IFD(orig) and r-IFD(both) < r-IFD(ins): keep ``both`` when its IFD and r-IFD
     are both below the thresholds (default 1), else drop;
  2. IFD(ins) > IFD(orig) and r-IFD(both) >= r-IFD(ins): drop;
  3. IFD(ins) <= IFD(orig) and r-IFD(res) < r-IFD(orig): keep ``res`` when both its scores are
     below the thresholds, else drop;
  4. IFD(ins) <= IFD(orig) and r-IFD(res) >= r-IFD(orig): drop.
  Ties go to the "not better" side, as in the authors' code. A missing or undefined score
  gives case ``missing`` with the score's own reason.
- ``cherry`` (IFD paper): the top fraction of sources by IFD among IFD < threshold.
- ``all``: every candidate; ``stage``: one kind (default ``both``, plain Reflection-Tuning V1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .records import Record
from .score_table import FIELDS as _SCORE_KEYS
from .score_table import Key
from .store import STORE_NAME, RunStore
from .text import repair_value

POLICIES = ("selective", "cherry", "all", "stage")
NAMESPACE = "selection"
CASES = {
    "1": "IFD(ins) > IFD(orig), r-IFD(both) < r-IFD(ins): keep both if its scores < 1",
    "2": "IFD(ins) > IFD(orig), r-IFD(both) >= r-IFD(ins): drop",
    "3": "IFD(ins) <= IFD(orig), r-IFD(res) < r-IFD(orig): keep res if its scores < 1",
    "4": "IFD(ins) <= IFD(orig), r-IFD(res) >= r-IFD(orig): drop",
    "missing": "a score needed by the rule is missing or undefined",
    "top": "within the top fraction by IFD",
    "below-top": "IFD below the top fraction",
    "ifd>=max": "IFD at or above the threshold",
    "all": "every candidate kept",
    "stage": "the chosen kind kept",
}


@dataclass
class Decision:
    source_index: int
    policy: str
    kept: str | None  # the kept kind ("all": comma-separated kinds), None when dropped
    case: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "kept": self.kept, "case": self.case,
                "reason": self.reason}


@dataclass
class Selection:
    policy: str
    decisions: dict[int, Decision]
    records: dict[Key, Record] | None = None  # candidates, when the source had their text
    scores: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def kept_keys(self) -> list[Key]:
        keys = []
        for idx in sorted(self.decisions):
            kept = self.decisions[idx].kept
            if kept:
                keys += [(idx, k) for k in kept.split(",")]
        return keys

    def kept_records(self) -> list[Record]:
        """The kept candidates with their scores and the decision in ``extra``."""
        if self.records is None:
            raise ConfigError("this score table has no candidate texts to write")
        out = []
        for key in self.kept_keys():
            rec = self.records.get(key)
            if rec is None:
                raise InputError(str(key), "a kept candidate has no record")
            extra = {**rec.extra, **_score_fields(self.scores.get(key)),
                     "selection": self.decisions[key[0]].to_dict()}
            out.append(_replace_extra(rec, extra))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """Per case: how many sources were kept and dropped."""
        out: dict[str, dict[str, int]] = {}
        for d in self.decisions.values():
            c = out.setdefault(d.case, {"kept": 0, "dropped": 0})
            c["kept" if d.kept else "dropped"] += 1
        return dict(sorted(out.items()))


def select(source: str | os.PathLike | Iterable[Mapping[str, Any]],
           policy: str = "selective", *, top: float = 0.05, ifd_max: float = 1.0,
           rifd_max: float = 1.0, metric: str = "ppl", kind: str = "both",
           kinds: tuple[str, ...] | None = None, store: bool = True) -> Selection:
    """Decide for every source record. ``source``: a run directory (decisions are stored in its
    namespace ``selection``), a scored JSONL/JSON file, or an iterable of score rows (dicts
    with ``source_index``, ``kind`` and the score fields; instruction/output optional)."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if metric not in ("ppl", "loss"):
        raise ConfigError(f"metric must be ppl or loss, got {metric!r}")
    if not top > 0:
        raise ConfigError(f"--top must be > 0 (a fraction, or a count when >= 1), got {top}")
    records, scores, run_dir = load_table(source)
    by_source: dict[int, dict[str, dict[str, Any] | None]] = {}
    for idx, k in list(scores) + list(records or {}):
        by_source.setdefault(idx, {})[k] = scores.get((idx, k))
    if policy == "selective":
        decisions = {idx: decide_selective(idx, s, ifd_max=ifd_max, rifd_max=rifd_max,
                                           metric=metric) for idx, s in by_source.items()}
    elif policy == "cherry":
        decisions = _cherry(by_source, top=top, ifd_max=ifd_max, metric=metric,
                            kinds=kinds or ("orig",))
    elif policy == "all":
        decisions = {idx: Decision(idx, policy, ",".join(k for k in sorted(s, key=_kind_order)
                                                          if not kinds or k in kinds) or None,
                                   "all", "every candidate kept") for idx, s in by_source.items()}
    else:
        decisions = {idx: Decision(idx, policy, kind if kind in s else None, "stage",
                                   f"{kind} candidate kept" if kind in s else
                                   f"no {kind} candidate") for idx, s in by_source.items()}
    selection = Selection(policy, dict(sorted(decisions.items())), records, scores)
    if store and run_dir is not None:
        with RunStore(run_dir, create=False) as st:
            st.put_items(NAMESPACE, ((str(i), d.to_dict()) for i, d in decisions.items()))
    return selection


def decide_selective(source_index: int, scores: Mapping[str, Mapping[str, Any] | None], *,
                     ifd_max: float = 1.0, rifd_max: float = 1.0,
                     metric: str = "ppl") -> Decision:
    """The four-case rule for one source (``scores``: kind -> score dict or None)."""
    ifd, rifd = f"ifd_{metric}", f"rifd_{metric}"

    def get(k: str, name: str) -> float:
        s = scores.get(k)
        value = s.get(name) if s else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            why = "not scored" if s is None else (s.get("reason") or "undefined")
            if k not in scores:
                why = "no such candidate"
            raise _Missing(f"{name} of {k}: {why}")
        return float(value)

    def fmt(v: float) -> str:
        return f"{v:.4f}"

    try:
        i_ins, i_orig = get("ins", ifd), get("orig", ifd)
        if i_ins > i_orig:
            head = f"IFD(ins) {fmt(i_ins)} > IFD(orig) {fmt(i_orig)}"
            r_both, r_ins = get("both", rifd), get("ins", rifd)
            if not r_both < r_ins:
                return Decision(source_index, "selective", None, "2",
                                f"{head}; r-IFD(both) {fmt(r_both)} >= r-IFD(ins) {fmt(r_ins)}"
                                ": drop")
            head += f"; r-IFD(both) {fmt(r_both)} < r-IFD(ins) {fmt(r_ins)}"
            return _filtered(source_index, "1", "both", head, get("both", ifd), r_both,
                             ifd_max, rifd_max)
        head = f"IFD(ins) {fmt(i_ins)} <= IFD(orig) {fmt(i_orig)}"
        r_res, r_orig = get("res", rifd), get("orig", rifd)
        if not r_res < r_orig:
            return Decision(source_index, "selective", None, "4",
                            f"{head}; r-IFD(res) {fmt(r_res)} >= r-IFD(orig) {fmt(r_orig)}: drop")
        head += f"; r-IFD(res) {fmt(r_res)} < r-IFD(orig) {fmt(r_orig)}"
        return _filtered(source_index, "3", "res", head, get("res", ifd), r_res, ifd_max,
                         rifd_max)
    except _Missing as e:
        return Decision(source_index, "selective", None, "missing", str(e))


def write_selection(selection: Selection, output: str | os.PathLike, *,
                    format: str = "jsonl") -> int:
    """Write the kept candidates (``jsonl``: full provenance, scores and decision)."""
    from .io import write_records

    return write_records(selection.kept_records(), output, format=format)


def load_table(source: str | os.PathLike | Iterable[Mapping[str, Any]]
               ) -> tuple[dict[Key, Record] | None, dict[Key, dict[str, Any]], Path | None]:
    """(candidates, scores, run_dir) from a run directory, a scored file or score rows."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if (path / STORE_NAME).is_file():
            with RunStore(path, create=False) as st:
                records = {(r.source_index, r.kind): r for r in st.candidates()}
                scores = st.scores()
            if not scores:
                raise ConfigError(f"{path}: no scores in this run yet: run rtune score first")
            return records, scores, path
        if not path.exists():
            raise InputError(str(path), "not found (expected a run directory or a scored file)")
        return (*_rows_table(_read_rows(path), str(path)), None)
    return (*_rows_table(source, "score table"), None)


# ---------------------------------------------------------------------- internals

class _Missing(Exception):
    pass


def _score_fields(s: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: s[k] for k in _SCORE_KEYS if s and k in s}


def _filtered(idx: int, case: str, kind: str, head: str, ifd: float, rifd: float,
              ifd_max: float, rifd_max: float) -> Decision:
    if ifd < ifd_max and rifd < rifd_max:
        return Decision(idx, "selective", kind, case,
                        f"{head}; IFD({kind}) {ifd:.4f} < {ifd_max:g} and r-IFD({kind}) "
                        f"{rifd:.4f} < {rifd_max:g}: keep {kind}")
    bad = (f"IFD({kind}) {ifd:.4f} >= {ifd_max:g}" if not ifd < ifd_max
           else f"r-IFD({kind}) {rifd:.4f} >= {rifd_max:g}")
    return Decision(idx, "selective", None, case, f"{head}; but {bad}: drop")


def _cherry(by_source: dict[int, dict[str, dict[str, Any] | None]], *, top: float,
            ifd_max: float, metric: str, kinds: tuple[str, ...]) -> dict[int, Decision]:
    name = f"ifd_{metric}"
    decisions: dict[int, Decision] = {}
    eligible: list[tuple[float, int, str]] = []
    for idx, cands in by_source.items():
        values = [(s[name], k) for k, s in cands.items()
                  if k in kinds and s and s.get(name) is not None]
        if not values:
            decisions[idx] = Decision(idx, "cherry", None, "missing",
                                      f"no {name} for {'/'.join(kinds)}")
            continue
        below = [(v, k) for v, k in values if v < ifd_max]
        if not below:
            v, k = max(values)
            decisions[idx] = Decision(idx, "cherry", None, "ifd>=max",
                                      f"IFD({k}) {v:.4f} >= {ifd_max:g}: drop")
            continue
        v, k = max(below)
        eligible.append((v, idx, k))
    n_keep = int(top) if top >= 1 else round(top * len(by_source))
    eligible.sort(key=lambda e: (-e[0], e[1]))
    for rank, (v, idx, k) in enumerate(eligible, start=1):
        where = f"IFD({k}) {v:.4f} ranks {rank}/{len(eligible)} (keeping {n_keep})"
        if rank <= n_keep:
            decisions[idx] = Decision(idx, "cherry", k, "top", f"{where}: keep {k}")
        else:
            decisions[idx] = Decision(idx, "cherry", None, "below-top", f"{where}: drop")
    return decisions


def _kind_order(kind: str) -> int:
    order = ("orig", "compress", "ins", "res", "both", "reflection")
    return order.index(kind) if kind in order else len(order)


def _rows_table(rows: Iterable[Mapping[str, Any]], where: str
                ) -> tuple[dict[Key, Record] | None, dict[Key, dict[str, Any]]]:
    records: dict[Key, Record] = {}
    scores: dict[Key, dict[str, Any]] = {}
    has_text = True
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(where, "expected an object", record=n)
        idx = row.get("source_index", n)
        if not isinstance(idx, int):
            raise InputError(where, "expected an integer", record=n, field="source_index")
        key = (idx, str(row.get("kind", "orig")))
        if key in scores:
            raise InputError(where, f"a second row for {key[0]}:{key[1]}", record=n)
        scores[key] = {k: row[k] for k in _SCORE_KEYS if k in row}
        if has_text and "instruction" in row and "output" in row:
            data = {k: v for k, v in row.items() if k not in _SCORE_KEYS}
            records[key] = Record.from_dict({**data, "source_index": key[0], "kind": key[1]})
        else:
            has_text = False
    return (records if has_text else None), scores


def _read_rows(path: Path) -> Iterable[dict[str, Any]]:
    from .io import detect_format, read_records

    fmt = detect_format(path)
    if fmt == "alpaca":  # a JSON list, e.g. the authors' analysis files
        with open(path, encoding="utf-8-sig") as f:
            try:
                return repair_value(json.load(f))[0]
            except json.JSONDecodeError as e:
                raise InputError(str(path), f"malformed JSON: {e.msg}", line=e.lineno) from None
    if fmt == "jsonl":
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(repair_value(json.loads(line))[0])
                    except json.JSONDecodeError as e:
                        raise InputError(str(path), f"malformed JSON: {e.msg}",
                                         line=line_no) from None
        return rows
    return [{**r.to_dict(), **r.extra} for r in read_records(path)]


def _replace_extra(rec: Record, extra: dict[str, Any]) -> Record:
    import dataclasses

    return dataclasses.replace(rec, extra=extra)
