"""Student-model scoring, batched and resumable: IFD = ppl(y | p(x)) / ppl(y) and
r-IFD = ppl(x | p(r(y))) / ppl(x), with the mean cross-entropy over the target tokens only.

For a candidate (x, y) the student gives four mean token losses (perplexity = exp(loss)):

- ``A_direct``    the answer y alone,
- ``A_condition`` y after the prompt p(x),
- ``Q_direct``    the instruction x (+ input) alone,
- ``Q_condition`` x after p(r(y)), r(y) asking to guess the instruction behind y;

IFD = ppl_A_condition / ppl_A_direct and r-IFD = ppl_Q_condition / ppl_Q_direct (and the same
ratios of the losses). Texts are tokenized and truncated exactly as the authors' per-record code
does (the answer alone gets the room the prompt leaves); only the forward passes differ: all four
sequences of a chunk of candidates are length-sorted and run in padded batches, and the output
layer is applied only at the target positions.
"""

from __future__ import annotations

import array
import hashlib
import inspect
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .distributed import process, wait_for_everyone
from .errors import ConfigError, InputError
from .records import Record
from .score_config import SCORE_PROMPTS, ScoreConfig, fingerprint, settings_identity
from .score_table import Key
from .store import RunStore

log = logging.getLogger(__name__)

PASSES = ("Q_direct", "A_direct", "Q_condition", "A_condition")
Progress = Callable[[int, int], None]  # (done, total)
# a batch is closed before padding would exceed this many times its real tokens (padding is
# computed like real tokens; on a CPU a smaller batch costs little)
PAD_LIMIT = 1.15
MEMO_SIZE = 1_000_000  # losses of distinct sequences kept for reuse (~150 bytes each)
SETTINGS_META = "score_settings"  # meta: settings fingerprint -> the settings it digests


def record_key(rec: Record) -> Key:
    return rec.source_index, rec.kind


@dataclass
class Seq:
    """Token ids of one pass; the targets are ``ids[start:]`` (each predicted from the one
    before it), as with the authors' labels ``-100`` on ``ids[:start]``."""

    ids: list[int]
    start: int


@dataclass
class Encoded:
    seqs: dict[str, Seq | None]
    reasons: dict[str, str]  # pass -> why it has no score
    truncated: bool


class Scorer:
    """A loaded student model with its prompts; :meth:`score` scores a list of candidates."""

    def __init__(self, config: ScoreConfig, model: Any = None, tokenizer: Any = None):
        config.validate()
        self.config = config
        if model is None or tokenizer is None:
            from .models import load_model

            model, tokenizer = load_model(config.student, device=config.device,
                                          dtype=config.dtype)
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._fast_head = _plain_output_layer(model)
        self._use_prefix = self._fast_head and (
            self.device.type == "cuda" if config.prefix_cache is None else config.prefix_cache)
        self._bos = tokenizer.bos_token or None
        # transformers >= 5.x names the KV-cache argument ``cache`` (``past_key_values`` before)
        self._cache_kwarg = ("cache" if "cache" in inspect.signature(
            model.get_decoder().forward).parameters else "past_key_values") \
            if self._fast_head else "past_key_values"
        self._prefix_kv: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        self._memo: dict[bytes, float] = {}  # sequence key -> mean loss
        self._fingerprint = config.fingerprint()
        if config.template not in SCORE_PROMPTS:
            from .templates import check_tokenizer

            check_tokenizer("auto" if config.template == "chat" else config.template, tokenizer)

    # ------------------------------------------------------------------ texts and tokens
    def prompt(self, instruction: str, input: str = "") -> str:
        """p(x): the text up to where the answer starts."""
        table = SCORE_PROMPTS.get(self.config.template)
        if table is not None:
            form = table[1] if input else table[0]
            return form.format_map({"instruction": instruction, "input": input})
        from .templates import render_prompt

        user = self.join(instruction, input)
        name = "auto" if self.config.template == "chat" else self.config.template
        return render_prompt(name, user, tokenizer=self.tokenizer)

    def join(self, instruction: str, input: str) -> str:
        """x as one text: the instruction, ``input_join`` and the input (the instruction alone
        when there is no input)."""
        return f"{instruction}{self.config.input_join}{input}" if input else instruction

    def reverse_prompt(self, output: str) -> str:
        """p(r(y)): the prompt asking the student for the instruction behind ``output``."""
        return self.prompt(self.config.reverse_prompt.replace("{output}", output))

    def _encode(self, text: str, limit: int | None = None) -> tuple[list[int], bool]:
        """``tokenizer.encode(text, truncation=True, max_length=limit)`` and whether it cut."""
        add = not (self._bos and text.startswith(self._bos))  # a rendered chat template has it
        ids = self.tokenizer(text, add_special_tokens=add)["input_ids"]
        if limit is None or len(ids) <= limit:
            return ids, False
        if limit < 1:
            return [], True
        cut = self.tokenizer(text, add_special_tokens=add, truncation=True,
                             max_length=limit)["input_ids"]
        return cut, True

    def encode(self, rec: Record) -> Encoded:
        """The four sequences of a candidate, truncated as the authors' code does."""
        L = self.config.max_length
        seqs: dict[str, Seq | None] = dict.fromkeys(PASSES)
        reasons: dict[str, str] = {}
        if not rec.output.strip():
            return Encoded(seqs, {p: "empty answer" for p in PASSES}, False)
        truncated = False
        prompt = self.prompt(rec.instruction, rec.input)
        p_full = len(self._encode(prompt)[0])
        a_direct, cut1 = self._encode(rec.output, L - min(p_full, L) + 1)
        a_cond, cut2 = self._encode(prompt + rec.output, L)
        seqs["A_direct"], seqs["A_condition"] = Seq(a_direct, 1), Seq(a_cond, p_full)
        truncated |= cut1 or cut2
        question = self.join(rec.instruction, rec.input if rec.input.strip() else "")
        if not question.strip():
            reasons["Q_direct"] = reasons["Q_condition"] = "empty instruction"
        else:
            reverse = self.reverse_prompt(rec.output)
            r_full = len(self._encode(reverse)[0])
            q_direct, cut3 = self._encode(question, L - min(r_full, L) + 1)
            q_cond, cut4 = self._encode(reverse + question, L)
            seqs["Q_direct"], seqs["Q_condition"] = Seq(q_direct, 1), Seq(q_cond, r_full)
            truncated |= cut3 or cut4
        for name, seq in seqs.items():
            if seq is not None and seq.start >= len(seq.ids):
                reasons[name] = (f"{name}: a single token, nothing to predict"
                                 if seq.start == 1 and not truncated else
                                 f"{name}: no target tokens left within max_length {L}")
                seqs[name] = None
        return Encoded(seqs, reasons, truncated)

    # ------------------------------------------------------------------ forward passes
    def losses(self, seqs: list[Seq], groups: list[str] | None = None) -> list[float]:
        """Mean target-token cross-entropy of each sequence, in padded batches of sequences
        of one group (e.g. one pass, sharing the prompt's head) sorted by length."""
        import torch

        out: list[float] = [math.nan] * len(seqs)
        keys = groups or [""] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: (keys[i], len(seqs[i].ids)))
        bs = self.config.batch_size
        batches: list[list[int]] = []
        real = 0  # tokens of the open batch
        for i in order:
            n = len(seqs[i].ids)  # the longest so far: the batch is padded to it
            last = batches[-1] if batches else None
            if (last and len(last) < bs and keys[last[0]] == keys[i]
                    and n * (len(last) + 1) <= PAD_LIMIT * (real + n)):
                last.append(i)
                real += n
            else:
                batches.append([i])
                real = n
        with torch.inference_mode():
            for batch in batches:
                for i, value in zip(batch, self._batch_losses([seqs[i] for i in batch])):
                    out[i] = value
        return out

    def _batch_losses(self, seqs: list[Seq]) -> list[float]:
        import torch

        # Tokens every row starts with (the template's head) are run once and reused from the
        # KV cache; they hold no targets (at most up to the position before the first one).
        skip = self._shared_prefix(seqs)
        width = max(len(s.ids) for s in seqs) - skip
        # Right padding: real tokens keep positions 0..n-1; pads are masked by the attention
        # mask and never read, so their id (pad == eos for many models) does not matter.
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), skip + width), dtype=torch.long)
        rows, cols, labels = [], [], []
        for r, s in enumerate(seqs):
            n = len(s.ids)
            ids[r, :n - skip] = torch.tensor(s.ids[skip:])
            mask[r, :n] = 1
            rows += [r] * (n - s.start)
            cols += range(s.start - 1 - skip, n - 1 - skip)
            labels += s.ids[s.start:]
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows_t = torch.tensor(rows, device=self.device)
        cols_t = torch.tensor(cols, device=self.device)
        labels_t = torch.tensor(labels, device=self.device)
        if self._fast_head:
            extra = {}
            if skip:
                extra = {self._cache_kwarg: self._prefix_cache(seqs[0].ids[:skip], len(seqs)),
                         "use_cache": True}
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask,
                                              **(extra or {"use_cache": False}))[0]
            picked = hidden[rows_t, cols_t]
            head = self.model.get_output_embeddings()
            logits_of = lambda sl: head(picked[sl])  # noqa: E731
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            picked = logits[rows_t, cols_t]
            logits_of = lambda sl: picked[sl]  # noqa: E731
        nll = torch.empty(len(labels), dtype=torch.float32, device=self.device)
        step = 2048  # rows of vocab-wide logits at a time
        for a in range(0, len(labels), step):
            sl = slice(a, a + step)
            nll[sl] = torch.nn.functional.cross_entropy(
                logits_of(sl).float(), labels_t[sl], reduction="none")
        sums = torch.zeros(len(seqs), dtype=torch.float64, device=self.device)
        sums.index_add_(0, rows_t, nll.double())
        counts = torch.tensor([len(s.ids) - s.start for s in seqs], dtype=torch.float64)
        return (sums.cpu() / counts).tolist()

    def _shared_prefix(self, seqs: list[Seq]) -> int:
        """How many leading tokens to take from the prefix cache (0: none)."""
        if not self._use_prefix:
            return 0
        first = seqs[0].ids
        n = min(min(s.start for s in seqs) - 1, *(len(s.ids) for s in seqs))
        for s in seqs[1:]:
            k = 0
            while k < n and s.ids[k] == first[k]:
                k += 1
            n = k
        return n if n >= 8 else 0

    def _prefix_cache(self, prefix: list[int], batch: int) -> Any:
        """A fresh KV cache holding ``prefix`` for ``batch`` rows (the prefix is run once)."""
        import torch
        from transformers import DynamicCache

        key = tuple(prefix)
        if key not in self._prefix_kv:
            ids = torch.tensor([prefix], device=self.device)
            out = self.model.get_decoder()(input_ids=ids, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            if len(self._prefix_kv) >= 4:  # the template heads recur; one-off prefixes go
                del self._prefix_kv[next(iter(self._prefix_kv))]
            self._prefix_kv[key] = [(layer.keys, layer.values) for layer in cache.layers]
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                            for k, v in self._prefix_kv[key]], config=self.model.config)

    # ------------------------------------------------------------------ scores
    def score(self, records: list[Record]) -> list[dict[str, Any]]:
        """Scores of each candidate (same order), with the authors' field names.

        A sequence already run (this call or an earlier one) is not run again: candidates
        share many (orig and res have the same instruction, a fallback repeats a field)."""
        encoded = [self.encode(r) for r in records]
        todo: dict[bytes, tuple[Seq, str]] = {}  # key -> (sequence, pass) to run now
        where: list[tuple[int, str, bytes]] = []
        for i, enc in enumerate(encoded):
            for name, seq in enc.seqs.items():
                if seq is not None:
                    key = _seq_key(seq)
                    if key not in self._memo:
                        todo.setdefault(key, (seq, name))
                    where.append((i, name, key))
        if todo:
            seqs, names = zip(*todo.values())
            # grouping by pass lets a batch share the prompt's head; without the prefix cache
            # it would only leave more padding
            self._memo.update(zip(todo, self.losses(list(seqs),
                                                    list(names) if self._use_prefix else None)))
        losses: list[dict[str, float]] = [{} for _ in records]
        for i, name, key in where:
            losses[i][name] = self._memo[key]
        excess = len(self._memo) - MEMO_SIZE
        if excess > 0:  # the oldest go first
            for key in list(itertools.islice(self._memo, excess)):
                del self._memo[key]
        return [self._result(enc, loss) for enc, loss in zip(encoded, losses)]

    def _result(self, enc: Encoded, losses: dict[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        reasons = dict(enc.reasons)
        for name in PASSES:
            loss = losses.get(name)
            if loss is not None and not math.isfinite(loss):
                reasons[name] = f"{name}: non-finite loss"
                loss = None
            ppl = None
            if loss is not None:
                try:
                    ppl = math.exp(loss)
                except OverflowError:
                    reasons[name] = f"{name}: perplexity overflows (loss {loss:.1f})"
            out[f"ppl_{name}"], out[f"loss_{name}"] = ppl, loss
        for ratio, metric, part in (("ifd_ppl", "ppl", "A"), ("rifd_ppl", "ppl", "Q"),
                                    ("ifd_loss", "loss", "A"), ("rifd_loss", "loss", "Q")):
            num, den = out[f"{metric}_{part}_condition"], out[f"{metric}_{part}_direct"]
            out[ratio] = num / den if num is not None and den else None
            if num is not None and den == 0:
                reasons[ratio] = f"{ratio}: {metric}_{part}_direct is 0"
        reason_list = list(dict.fromkeys(reasons.values()))  # "empty answer" once, not 4 times
        out.update(student=self.student_name, template=self.config.template,
                   max_length=self.config.max_length, score_settings=self._fingerprint,
                   truncated=enc.truncated, reason="; ".join(reason_list) or None)
        return out

    @property
    def student_name(self) -> str:
        from .models import model_name

        return model_name(self.config.student)

    def iter_chunks(self, records: list[Record]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        """Score ``records`` in chunks of candidates of similar length; yields
        ``[(position in records, scores), ...]`` per chunk (length order, not input order).
        A chunk holds four batches' worth of candidates, so that each pass's sequences can be
        sorted into batches of near-equal length (less padding)."""
        order = sorted(range(len(records)), key=lambda i: _size(records[i]))
        n = self.config.batch_size * 4
        for a in range(0, len(order), n):
            chunk = order[a:a + n]
            yield list(zip(chunk, self.score([records[i] for i in chunk])))


def _seq_key(seq: Seq) -> bytes:
    """A short fixed-size key of a sequence's ids and target start (a 128-bit digest keeps a
    run's memo small; a collision is as likely as a random 128-bit match)."""
    data = array.array("q", [seq.start, *seq.ids]).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def _size(rec: Record) -> int:
    return len(rec.instruction) + len(rec.input) + len(rec.output)


def _plain_output_layer(model: Any) -> bool:
    """Whether logits are just ``output_layer(final hidden state)`` (no softcapping/scaling),
    so the output layer can be applied at the target positions only."""
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in (
            "final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")):
        return False
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


# ---------------------------------------------------------------------- public API

def score_records(records: Iterable[Record], config: ScoreConfig, *, model: Any = None,
                  tokenizer: Any = None) -> Iterator[dict[str, Any]]:
    """Score candidates; yields ``{"index", "source_index", "kind", <scores>}`` per record as
    each length-bucketed chunk finishes (``index`` = position in ``records``)."""
    recs = list(records)
    if not recs:
        return
    scorer = Scorer(config, model, tokenizer)
    for chunk in scorer.iter_chunks(recs):
        for i, scores in chunk:
            yield {"index": i, "source_index": recs[i].source_index, "kind": recs[i].kind,
                   **scores}


def score_run(run_dir: str | Path, config: ScoreConfig, *, progress: Progress | None = None,
              model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Score every candidate of a run into the store's ``scores`` table, skipping candidates
    already scored: a rerun resumes."""
    config.validate()
    with RunStore(run_dir, create=False) as store:
        candidates = list(store.candidates())
        if not candidates:
            raise ConfigError(f"{run_dir}: the run has no candidates yet: run rtune recycle "
                              "first, or score a dataset file")
        done, seconds = _store_scores(store, candidates, config, progress=progress,
                                      model=model, tokenizer=tokenizer)
    rank, world = process()
    wait_for_everyone()  # data-parallel: the summary covers every process's share
    with RunStore(run_dir, create=False) as store:
        summary = _summary(store, candidates, seconds, done)
        if rank == 0:
            store.set_meta("score_config", config.to_dict())
    summary.update(rank=rank, processes=world, run_dir=str(run_dir))
    return summary


def score_file(path: str | os.PathLike, config: ScoreConfig, output: str | os.PathLike, *,
               input_format: str = "auto", limit: int | None = None,
               progress: Progress | None = None, model: Any = None,
               tokenizer: Any = None) -> dict[str, Any]:
    """Score a plain dataset (every record a candidate of kind ``orig``; the first ``limit``
    when given) and write it as JSONL with the score fields added to each record. Progress is
    kept in a hidden store next to ``output`` until it is written, so a killed run resumes."""
    from .io import read_records

    config.validate()
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be >= 1")
    records = list(itertools.islice(read_records(path, format=input_format), limit))
    keys = [record_key(r) for r in records]
    if len(set(keys)) != len(keys):
        raise InputError(str(path), "two records share a source_index and kind")
    output = Path(output)
    work = output.parent / f".{output.name}.rtune-score"
    stamp = _file_stamp(path)
    rank, world = process()
    if rank == 0:  # scores of an earlier version of the input are stale
        with RunStore(work) as store:
            if store.get_meta("input") not in (None, stamp):
                store.delete_scores()
            store.set_meta("input", stamp)
    wait_for_everyone()
    with RunStore(work) as store:
        done, seconds = _store_scores(store, records, config, progress=progress,
                                      model=model, tokenizer=tokenizer)
    wait_for_everyone()
    if rank != 0:  # data-parallel: the main process writes the output file
        return {"scored_now": done, "seconds": round(seconds, 2), "rank": rank,
                "processes": world}
    with RunStore(work) as store:
        summary = _summary(store, records, seconds, done)
        scores = store.scores()
    _write_scored(records, scores, output)
    for name in os.listdir(work):
        os.unlink(work / name)
    os.rmdir(work)
    summary.update(input=str(path), output=str(output))
    return summary


def write_run_scores(run_dir: str | Path, output: str | os.PathLike) -> int:
    """Write every candidate of a run with its scores (flat JSONL, the authors' field names)."""
    with RunStore(run_dir, create=False) as store:
        records = list(store.candidates())
        scores = store.scores()
    _write_scored(records, scores, Path(output))
    return len(records)


def scored_rows(records: Iterable[Record], scores: dict[Key, Any]) -> Iterator[dict[str, Any]]:
    """Each record as a flat dict (provenance fields, extras, then the score fields)."""
    for rec in records:
        row = rec.to_dict()
        extra = row.pop("extra", {})
        yield {**row, **extra, **(scores.get(record_key(rec)) or {})}


# ---------------------------------------------------------------------- internals

def _store_scores(store: RunStore, records: list[Record], config: ScoreConfig, *,
                  progress: Progress | None, model: Any, tokenizer: Any) -> tuple[int, float]:
    """Score the records not stored yet; (number scored, seconds of scoring after loading)."""
    existing: set[Key] = set()
    if not config.force:
        _check_settings(store, config)
        existing = set(store.scores())
    rank, world = process()
    # each process owns a fixed share of all records (not of the pending ones, which change
    # as the others store results), so shares never overlap or leave gaps; a source's
    # candidates stay together, as they share sequences that run once
    pending = [r for r in records if r.source_index % world == rank
               and (config.force or record_key(r) not in existing)]
    total = len(pending)
    if progress:
        progress(0, total)
    if not pending:
        return 0, 0.0
    if config.device == "auto" and world > 1:
        config = _with_device(config)
    scorer = Scorer(config, model, tokenizer)
    started = time.perf_counter()
    done = 0
    identity = config.identity()
    store.set_meta(SETTINGS_META, {**store.get_meta(SETTINGS_META, {}),
                                   fingerprint(identity): identity})
    for chunk in scorer.iter_chunks(pending):
        store.put_scores([(record_key(pending[i]), s) for i, s in chunk])
        done += len(chunk)
        if progress:
            progress(done, total)
    return done, time.perf_counter() - started


def _check_settings(store: RunStore, config: ScoreConfig) -> None:
    """Refuse to add scores made with other settings than the stored ones (a mix would rank
    candidates by two scales)."""
    new = config.identity()
    known = store.get_meta(SETTINGS_META, {})
    for row in store.score_provenance():
        fp = row["score_settings"]
        old = known.get(fp) if fp else settings_identity(row["student"], row["template"],
                                                        row["max_length"])
        if (fp or fingerprint(old)) == fingerprint(new):
            continue
        diffs = [f"{k} {_short(old.get(k))} -> {_short(new[k])}" for k in new
                 if old and old.get(k) != new[k]] or [f"fingerprint {fp} -> {fingerprint(new)}"]
        raise ConfigError(f"scores already stored here were made with other settings "
                          f"({'; '.join(diffs)}): pass --force to rescore everything with "
                          "the new settings")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def _with_device(config: ScoreConfig) -> ScoreConfig:
    import dataclasses

    from accelerate import PartialState

    return dataclasses.replace(config, device=str(PartialState().device))


def _summary(store: RunStore, records: list[Record], seconds: float,
             done: int) -> dict[str, Any]:
    scores = store.scores()
    by_kind: dict[str, dict[str, Any]] = {}
    reasons: dict[str, int] = {}
    for rec in records:
        s = scores.get(record_key(rec))
        k = by_kind.setdefault(rec.kind, {"n": 0, "scored": 0, "ifd": [], "rifd": [],
                                          "truncated": 0})
        k["n"] += 1
        if s is None:
            continue
        k["scored"] += 1
        k["truncated"] += bool(s.get("truncated"))
        for field, name in (("ifd_ppl", "ifd"), ("rifd_ppl", "rifd")):
            if s.get(field) is not None:
                k[name].append(s[field])
        if s.get("reason"):
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    for k in by_kind.values():
        for name in ("ifd", "rifd"):
            vals = k.pop(name)
            k[f"mean_{name}"] = sum(vals) / len(vals) if vals else None
            k[f"{name}_below_1"] = sum(v < 1 for v in vals)
    return {"candidates": len(records), "scored_now": done,
            "scored_total": sum(k["scored"] for k in by_kind.values()),
            "seconds": round(seconds, 2),
            "records_per_s": round(done / seconds, 3) if done and seconds > 0 else None,
            "by_kind": by_kind, "undefined_reasons": reasons}


def _file_stamp(path: str | os.PathLike) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _write_scored(records: list[Record], scores: dict[Key, Any], output: Path) -> None:
    import json

    from .io import atomic_output

    with atomic_output(output) as f:
        for row in scored_rows(records, scores):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
