"""``rtune recycle``: the reflection stages of Reflection-Tuning over any oracle.

For each source record: (optional) compress → instruction reflection ("ins") and response
reflection ("res") side by side → response reflection of the ins result ("both"). Every
candidate is committed to the run store as soon as it exists; a rerun skips what is done and
replays finished oracle calls from the store, so nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .fingerprint import check_same_run, run_identity
from .guided import GuidedSpec, Shape, check_prompt, guided_extra, guided_spec, stage_shape
from .io import read_records, write_records
from .linear import off_loop
from .oracle import PermanentError, TransientError
from .oracle.base import Backend, ChatRequest
from .oracle.deferred import Deferred
from .parse import parse_sections
from .progress import RunProgress
from .prompts import Prompt, load_prompt
from .records import Record
from .recycle_config import STAGE_KIND, RecycleConfig
from .store import RunStore
from .text import REPAIR_NOTE

log = logging.getLogger(__name__)

MIN_ANSWER_TOKENS = 256  # room the oracle keeps for its reply when a record is cut to fit


@dataclass(frozen=True)
class StageSpec:
    prompt: str
    fields: dict[str, str]  # marker label -> Record field it fills


STAGE_SPECS = {
    "compress": StageSpec("compress", {"Merged Instruction": "instruction"}),
    "instruction": StageSpec("reflect_instruction",
                             {"New Instruction": "instruction", "New Answer": "output"}),
    "response": StageSpec("reflect_response", {"Better Answer": "output"}),
    "both": StageSpec("reflect_response", {"Better Answer": "output"}),
}


@dataclass
class RecycleSummary:
    run_dir: str
    records: int
    candidates: dict[str, dict[str, int]]
    failures: dict[str, int]  # this run's stages left undone, by reason (a rerun retries them)
    invalid: int
    calls: dict[str, Any]
    output: str | None = None


class Recycler:
    """Holds a run's prompts, engine and store; ``process`` recycles one source record."""

    def __init__(self, config: RecycleConfig, store: RunStore, backend: Backend,
                 progress: RunProgress | None = None):
        self.config = config
        self.store = store
        self.backend = backend
        self.progress = progress
        self.engine = config.engine(store, backend=backend,
                                    on_call=progress.add_call if progress else None)
        self.prompts: dict[str, Prompt] = {
            spec.prompt: load_prompt(spec.prompt, config.prompts_dir)
            for name, spec in STAGE_SPECS.items() if name in config.stages}
        self.reask_prompt = load_prompt("reask", config.prompts_dir)
        mode = config.guided_mode
        self.guided: dict[str, GuidedSpec | None] = {
            stage: guided_spec(shape, mode, config.spec, config.local_loop_guard)
            for stage, shape in stage_shapes(config).items()}
        self.context_length = config.context_length or getattr(backend, "context_length", None)
        self.failures: Counter[str] = Counter()

    # ------------------------------------------------------------ one record
    async def process(self, rec: Record) -> None:
        try:
            await self._process(rec)
        finally:
            if self.progress:
                self.progress.advance()

    async def _process(self, rec: Record) -> None:
        store, stages = self.store, self.config.stages
        if store.get_candidate(rec.source_index, "orig") is None:
            orig = dataclasses.replace(rec, kind="orig")
            if rec.is_multi_turn:
                orig.parse_status, orig.fallback_reason = "skipped", "multi_turn: passed through"
            store.put_candidate(orig)
        if rec.is_multi_turn:
            return
        base = rec
        if "compress" in stages and rec.input.strip():
            base = await self._stage(rec, "compress")
            if base is None:
                return
        tasks = {}
        if "instruction" in stages:
            tasks["ins"] = asyncio.ensure_future(self._stage(base, "instruction"))
        if "response" in stages:
            tasks["res"] = asyncio.ensure_future(self._stage(base, "response"))
        if "reflection-format" in stages:
            tasks["reflection"] = asyncio.ensure_future(self._reflection_format(base))
        try:
            results = dict(zip(tasks, await asyncio.gather(*tasks.values())))
        except BaseException:
            for t in tasks.values():
                t.cancel()
            raise
        if "both" in stages and results.get("ins") is not None:
            await self._stage(results["ins"], "both")

    async def _stage(self, base: Record, stage: str) -> Record | None:
        """One reflection stage on ``base``; None when the oracle failed (retried next run)."""
        kind = STAGE_KIND[stage]
        done = self.store.get_candidate(base.source_index, kind)
        if done is not None:
            return done
        spec = STAGE_SPECS[stage]
        prompt = self.prompts[spec.prompt]
        source, cut_note = self._fit_context(base, prompt, stage)
        messages = prompt.messages(with_example=self.config.use_example,
                                   **self._variables(source, stage))
        try:
            raws, parsed = await self._ask(messages, prompt, stage)
        except Deferred:  # batch and export modes: the reply comes in a later round
            return None
        except (TransientError, PermanentError) as e:
            if isinstance(e, PermanentError) and e.reason == "context_length" and not cut_note:
                half = dataclasses.replace(source, output=source.output[: len(source.output) // 2])
                messages = prompt.messages(with_example=self.config.use_example,
                                           **self._variables(half, stage))
                cut_note = "answer cut in half after a context-length error"
                try:
                    raws, parsed = await self._ask(messages, prompt, stage)
                except Deferred:
                    return None
                except (TransientError, PermanentError) as e2:
                    return self._failed(base, stage, e2)
            else:
                return self._failed(base, stage, e)
        cand = self._candidate(base, stage, kind, prompt, raws, parsed, cut_note)
        self.store.put_candidate(cand)
        return cand

    def _failed(self, base: Record, stage: str,
                error: TransientError | PermanentError) -> None:
        log.warning("record %d %s failed: %s", base.source_index, stage, error)
        self.failures[error.reason] += 1

    async def _ask(self, messages: list[dict[str, str]], prompt: Prompt,
                   stage: str) -> tuple[list[str], dict[str, str | None]]:
        """Ask, parse, and re-ask (bounded) for the parts that are missing."""
        request = self._request(messages, stage)
        result = await self.engine.complete(request, stage=stage)
        raws = [result.text]
        repaired = result.extra.get("repaired", 0)
        guided = result.extra.get("guided")
        cut = result.finish_reason == "length"
        parsed = await off_loop(parse_sections, result.text, prompt.labels, prompt.echo_phrases)
        fields = dict(parsed.fields)
        reasons = dict(parsed.reasons)
        for _ in range(self.config.reask):
            if not reasons:
                break
            follow = self.reask_prompt.render_user(missing=list(reasons))
            messages = [*messages, {"role": "assistant", "content": result.text},
                        {"role": "user", "content": follow}]
            result = await self.engine.complete(self._request(messages, stage),
                                                stage=f"{stage}:reask")
            raws.append(result.text)
            repaired += result.extra.get("repaired", 0)
            cut = cut or result.finish_reason == "length"
            again = await off_loop(parse_sections, result.text, tuple(reasons),
                                   prompt.echo_phrases)
            for label in list(reasons):
                if again.fields.get(label) is not None:
                    fields[label] = again.fields[label]
                    del reasons[label]
                else:
                    reasons[label] = again.reasons[label]
        fields["__reasons__"] = reasons  # type: ignore[assignment]
        fields["__repaired__"] = repaired  # type: ignore[assignment]
        fields["__guided__"] = guided  # type: ignore[assignment]
        fields["__cut__"] = cut  # type: ignore[assignment]
        return raws, fields

    def _request(self, messages: list[dict[str, str]], stage: str | None = None) -> ChatRequest:
        c = self.config
        max_tokens = c.max_tokens
        if self.context_length:
            used = self.backend.count_tokens("".join(m["content"] for m in messages))
            used += 8 * len(messages)
            max_tokens = max(16, min(max_tokens, self.context_length - used))
        return ChatRequest(messages=messages, model=c.model_name, temperature=c.temperature,
                           top_p=c.top_p, max_tokens=max_tokens,
                           guided=self.guided.get(stage) if stage else None)

    def _fit_context(self, rec: Record, prompt: Prompt,
                     stage: str) -> tuple[Record, str | None]:
        """Cut the answer so prompt + reply fit the oracle's window (as the paper did)."""
        if not self.context_length:
            return rec, None
        budget = self.context_length - min(self.config.max_tokens, MIN_ANSWER_TOKENS)
        cut = False
        for _ in range(4):
            messages = prompt.messages(with_example=self.config.use_example,
                                       **self._variables(rec, stage))
            used = self.backend.count_tokens("".join(m["content"] for m in messages))
            used += 8 * len(messages)
            if used <= budget:
                break
            answer_tokens = max(1, self.backend.count_tokens(rec.output))
            keep = max(0, answer_tokens - (used - budget) - 8)
            rec = dataclasses.replace(rec, output=rec.output[: len(rec.output) * keep
                                                             // answer_tokens])
            cut = True
        else:
            return rec, "answer cut, and the record still exceeds the oracle's context"
        return rec, "answer cut to fit the oracle's context" if cut else None

    @staticmethod
    def _variables(rec: Record, stage: str) -> dict[str, Any]:
        if stage == "instruction":
            return {"instruction": rec.prompt_text, "input": "", "output": rec.output}
        return {"instruction": rec.instruction, "input": rec.input, "output": rec.output}

    def _candidate(self, base: Record, stage: str, kind: str, prompt: Prompt, raws: list[str],
                   fields: dict[str, Any], cut_note: str | None) -> Record:
        reasons: dict[str, str] = fields.pop("__reasons__")
        repaired: int = fields.pop("__repaired__", 0)
        guided: dict[str, Any] | None = fields.pop("__guided__", None)
        cut: bool = fields.pop("__cut__", False)
        spec = STAGE_SPECS[stage]
        changes: dict[str, Any] = {}
        for label, field in spec.fields.items():
            if fields.get(label) is not None:
                changes[field] = fields[label]
        if stage in ("compress", "instruction") and "instruction" in changes:
            changes["input"] = ""  # the new instruction stands alone
        if len(reasons) == 0:
            status = "ok"
        elif len(reasons) == len(spec.fields):
            status = "fallback"
        else:
            status = "partial"
        notes = [f"{label}: {why}, kept the original" for label, why in reasons.items()]
        if len(raws) > 1:
            notes.append(f"re-asked {len(raws) - 1}x")
        if repaired:
            notes.append(f"reply: {repaired} {REPAIR_NOTE}")
        if cut:
            notes.append("reply cut at max tokens")
        if cut_note:
            notes.append(cut_note)
        cand = base.derive(
            kind, oracle_model=self.config.model_name, prompt_id=prompt.id,
            prompt_version=prompt.version, raw="\n\n--- re-ask ---\n\n".join(raws),
            parse_status=status, fallback_reason="; ".join(notes) or None, **changes)
        cand.extra = {"derived_from": base.kind, **guided_extra(guided, cut)}
        return cand

    async def _reflection_format(self, base: Record) -> Record | None:
        from .reflection_stage import reflection_candidate

        done = self.store.get_candidate(base.source_index, "reflection")
        if done is not None:
            return done
        prompt = load_prompt("reflection_format", self.config.prompts_dir)
        source, cut_note = self._fit_context(base, prompt, "reflection-format")
        try:  # ask, parse, re-ask while malformed; fallback keeps the pair with the reason
            cand = await reflection_candidate(
                self.engine, source, prompt, self.config.model_name,
                with_example=self.config.use_example, reask=self.config.reask,
                request_for=lambda messages: self._request(messages, "reflection-format"))
        except Deferred:
            return None
        except (TransientError, PermanentError) as e:
            return self._failed(base, "reflection-format", e)
        if cut_note:
            cand.fallback_reason = "; ".join(filter(None, [cand.fallback_reason, cut_note]))
            if cand.parse_status == "fallback":
                cand.output = base.output
        self.store.put_candidate(cand)
        return cand


def stage_shapes(config: RecycleConfig) -> dict[str, Shape]:
    """The declared reply shape of each of the run's stages, after checking that its prompt
    (``--prompts`` overrides included) still asks for it: a mismatch is refused here, before
    any call, naming the template and the missing marker."""
    shapes: dict[str, Shape] = {}
    for stage in config.stages:
        name = STAGE_SPECS[stage].prompt if stage in STAGE_SPECS else "reflection_format"
        prompt = load_prompt(name, config.prompts_dir)
        shapes[stage] = stage_shape(stage, prompt.echo_phrases)
        check_prompt(shapes[stage], prompt, f"{stage} stage")
    return shapes


# ---------------------------------------------------------------- the run


def validate_input(path: str | Path, config: RecycleConfig,
                   invalid: list[InputError] | None = None) -> int:
    """A streaming pass over the input before anything is written or paid for; returns the
    record count. With ``--skip-invalid`` bad records are appended to ``invalid``."""
    count = 0

    def on_invalid(err: InputError) -> None:
        if not config.skip_invalid:
            raise err
        if invalid is not None:
            invalid.append(err)

    for _ in iter_input(path, config, on_invalid):
        count += 1
    return count


def result_settings(config: RecycleConfig) -> dict[str, Any]:
    """The settings that change a run's results (not its speed or cost), each prompt as its
    tag and a hash of its text. Loads prompts and prices, so bad ones are refused here."""
    config.prices()
    names = {STAGE_SPECS[s].prompt for s in config.stages if s in STAGE_SPECS} | {"reask"}
    if "reflection-format" in config.stages:
        names.add("reflection_format")
    stage_shapes(config)
    settings: dict[str, Any] = {
        "model": config.model_name, "temperature": config.temperature, "top_p": config.top_p,
        "max_tokens": config.max_tokens, "reask": config.reask, "example": config.use_example,
        "context_length": config.context_length, "guided": config.guided_mode}
    if config.guided_mode != "off" and config.local_loop_guard:
        settings["loop_guard"] = config.local_loop_guard
    for name in sorted(names):
        prompt = load_prompt(name, config.prompts_dir)
        text = json.dumps([prompt.system, prompt.user, prompt.example], ensure_ascii=False)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        settings[f"prompt {name}"] = f"{prompt.tag} {digest}"
    return settings


def _open_run(run_dir: str | Path, identity: dict[str, Any], invalid: list[InputError],
              force_new: bool) -> RunStore:
    """The run's store, locked for this process, checked to hold this input's run."""
    store = RunStore(run_dir, writer="recycle", fresh=force_new)
    try:
        check_same_run(store, identity)
        already = {(e["line"], e["record"]) for e in store.invalid()}
        for err in invalid:
            if (err.line, err.record) not in already:
                store.add_invalid(err)
    except BaseException:
        store.close()
        raise
    return store


def iter_input(path: str | Path, config: RecycleConfig, on_invalid=None) -> Iterator[Record]:
    for n, rec in enumerate(read_records(path, on_invalid=on_invalid or (lambda e: None))):
        if config.limit is not None and n >= config.limit:
            return
        yield rec


def recycle(input_path: str | Path, run_dir: str | Path, config: RecycleConfig | None = None, *,
            output: str | Path | None = None, output_format: str = "jsonl",
            backend: Backend | None = None, force_new: bool = False) -> RecycleSummary:
    """Recycle a dataset into ``run_dir`` (resumable); export every candidate to ``output``.

    Input, settings and oracle are checked before anything is written. One process at a time
    writes a run folder (:class:`~rtune.store.RunLock`); the folder keeps its input's
    fingerprint and result settings and refuses another input or other settings
    (:mod:`rtune.fingerprint`), unless ``force_new`` starts it afresh.
    """
    config = config or RecycleConfig()
    if config.mode != "online":
        raise ConfigError(f"mode {config.mode!r} runs through rtune.recycle_batch."
                          "recycle_batch (batch) or rtune.recycle_rounds.export_round / "
                          "import_round (export, import), not recycle()")
    input_path = Path(input_path)
    invalid: list[InputError] = []
    total = validate_input(input_path, config, invalid)
    identity = run_identity(input_path, result_settings(config))
    backend = backend or config.backend()
    try:
        store = _open_run(run_dir, identity, invalid, force_new)
    except BaseException:
        asyncio.run(backend.aclose())
        raise
    with store:
        store.set_meta("input_records", total)
        store.set_meta("recycle_config", config.public())
        progress = RunProgress(total, enabled=config.progress, label="recycle")
        recycler = Recycler(config, store, backend, progress)

        async def run_all() -> None:
            try:
                with progress:
                    async for _ in recycler.engine.map(recycler.process,
                                                       iter_input(input_path, config)):
                        pass
            finally:
                await backend.aclose()

        try:
            asyncio.run(run_all())
        finally:
            if hasattr(backend, "counts"):  # replicas: calls and failures of each
                store.set_meta("replicas", backend.counts())
            if hasattr(backend, "guided"):  # which guided fields the endpoint took
                store.set_meta("guided", {"mode": config.guided_mode,
                                          **backend.guided.report()})
        out = None
        if output is not None:
            out = str(output)
            write_records(store.candidates(), output, format=output_format)
        return RecycleSummary(
            run_dir=str(run_dir), records=total, candidates=store.candidate_counts(),
            failures=dict(recycler.failures), invalid=len(store.invalid()),
            calls=store.call_totals(), output=out)


def export(run_dir: str | Path, output: str | Path, *, kinds: tuple[str, ...] | None = None,
           output_format: str = "jsonl", only_ok: bool = False) -> int:
    """Write a run's candidates (optionally some kinds, optionally parsed-ok only)."""
    with RunStore(run_dir, create=False) as store:
        def chosen() -> Iterator[Record]:
            for rec in store.candidates():
                if kinds and rec.kind not in kinds:
                    continue
                if only_ok and rec.parse_status not in ("ok", None):
                    continue
                yield rec

        return write_records(chosen(), output, format=output_format)
