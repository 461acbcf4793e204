"""The Reflection 70B answer format: ``<thinking>`` / ``<reflection>`` / ``<output>``.

A model in this format reasons inside ``<thinking>``, corrects itself inside ``<reflection>``
(usually nested in the thinking) and gives its final answer inside ``<output>``. Evaluators
score only the ``<output>`` part, falling back to the whole text (flagged) when there is none.

This module holds the tolerant parser (:func:`parse_reflection`, :func:`extract_output`), the
two inference modes (:func:`reflect`: ``format`` = one call with the reflection system prompt,
``loop`` = draft → critique → revise with any model), the recycling stage helpers
(:func:`build_reflection_request`, :func:`parse_reflection_reply`) and an optional helper that
adds the tags as special tokens before training.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .linear import atomic, fence_spans, off_loop
from .oracle.base import ChatRequest
from .prompts import Prompt, load_prompt
from .records import Record

TAGS = ("thinking", "reflection", "output")
SPECIAL_TOKENS = tuple(f"<{t}>" for t in TAGS) + tuple(f"</{t}>" for t in TAGS)
NAMESPACE = "reflect"  # run-store namespace of `rtune reflect` results

# ---------------------------------------------------------------- the parser

# blank runs matched atomically: a run of blanks after "<" cannot cost more than its length
_TAG = re.compile("<" + atomic(r"\s*") + "(?:(?P<slash>/)" + atomic(r"\s*") + ")?"
                  "(?P<name>thinking|reflection|output)" + atomic(r"\s*") + ">", re.IGNORECASE)
# fenced blocks (``` or ~~~ at a line start, up to the same fence at a line start; models often
# put a closing tag right after the closing fence: "```</output>") come from fence_spans
_INLINE_CODE = re.compile("`" + atomic(r"[^`\n]+") + "`")


@dataclass
class ReflectionParse:
    """What a reply in the reflection format holds.

    ``output`` is the final answer: the last non-empty ``<output>`` block, or (``flagged``) the
    text outside the thinking, or the whole text. ``reason`` says what was repaired or why the
    output is a fallback; None for a clean reply.
    """

    output: str
    thinking: str | None = None
    reflections: list[str] = field(default_factory=list)
    flagged: bool = False
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return not self.flagged


@dataclass
class _Block:
    name: str
    start: int  # first character of the content
    end: int | None = None  # one past the last character of the content
    closed: bool = False


class _Spans:
    """Sorted, non-overlapping character ranges with a fast membership test."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = sorted(spans)
        self.starts = [a for a, _ in self.spans]

    def __contains__(self, pos: int) -> bool:
        i = bisect_right(self.starts, pos) - 1
        return i >= 0 and pos < self.spans[i][1]


def _code_spans(text: str, *, fences: bool = True) -> _Spans:
    fenced = _Spans(fence_spans(text) if fences else [])
    inline = [m.span() for m in _INLINE_CODE.finditer(text) if m.start() not in fenced]
    return _Spans(fenced.spans + inline)


def _tags(text: str, *, fences: bool) -> list[re.Match[str]]:
    """Tag matches outside inline code, and outside fenced blocks when ``fences``."""
    tags = list(_TAG.finditer(text))
    if not tags:
        return tags
    code = _code_spans(text, fences=fences)
    return [m for m in tags if m.start() not in code]


def _blocks(text: str, tags: list[re.Match[str]]) -> tuple[list[_Block], list[str]]:
    """Pair opening and closing tags with a stack, repairing what models get wrong."""
    blocks: list[_Block] = []
    stack: list[_Block] = []
    notes: list[str] = []
    for m in tags:
        closing, name = bool(m.group("slash")), m.group("name").lower()
        if not closing:
            # a tag opened again before it was closed, or <output> inside an open <thinking>:
            # close the open ones first (models forget closing tags far more often than they
            # nest a tag in itself)
            names = [b.name for b in stack]
            cut = names.index(name) if name in names else None
            if name == "output" and cut is None and stack:
                cut = 0
            if cut is not None:
                for b in reversed(stack[cut:]):
                    b.end = m.start()
                    notes.append(f"unclosed <{b.name}>")
                del stack[cut:]
            block = _Block(name, m.end())
            blocks.append(block)
            stack.append(block)
            continue
        names = [b.name for b in stack]
        if name not in names:
            notes.append(f"stray </{name}>")
            continue
        cut = len(names) - 1 - names[::-1].index(name)
        for b in reversed(stack[cut + 1:]):
            b.end = m.start()
            notes.append(f"unclosed <{b.name}>")
        stack[cut].end, stack[cut].closed = m.start(), True
        del stack[cut:]
    for b in reversed(stack):
        b.end = len(text)
        notes.append(f"unclosed <{b.name}>")
    return blocks, notes


def _strip_tags(text: str) -> str:
    return _TAG.sub("", text).strip()


def _outside(text: str, blocks: list[_Block]) -> str:
    """The text outside every thinking/reflection block, tags removed."""
    keep, pos = [], 0
    for b in sorted((b for b in blocks if b.name != "output"), key=lambda b: b.start):
        opening = text.rfind("<", 0, b.start)
        if opening >= pos:
            keep.append(text[pos:opening])
        end = b.end if b.end is not None else len(text)
        if b.closed:
            close = text.find(">", end)
            end = close + 1 if close != -1 else len(text)
        pos = max(pos, end)
    keep.append(text[pos:])
    return _strip_tags("".join(keep))


def parse_reflection(text: str | None) -> ReflectionParse:
    """Split a reply into thinking, reflections and output; never raises.

    Tolerates missing closing tags, several reflection (or output) blocks, tags written inside
    code fences or inline code (ignored while real tags exist outside code; used when the whole
    reply was fenced) and replies with no tags at all (the whole text, flagged).
    """
    if not isinstance(text, str) or not text.strip():
        return ReflectionParse(output="", flagged=True, reason="empty reply")
    notes: list[str] = []
    tags = _tags(text, fences=True)
    if not tags:  # the model fenced its whole reply
        tags = _tags(text, fences=False)
        if tags:
            notes.append("tags only inside a code fence")
    if not tags:
        return ReflectionParse(output=text.strip(), flagged=True, reason="no tags")
    blocks, repairs = _blocks(text, tags)
    notes.extend(dict.fromkeys(repairs))  # de-duplicated, in order

    tag_starts = [m.start() for m in tags]

    def content(b: _Block, *, keep_tags: bool = False) -> str:
        """The block's text without the real tags inside it (tags in code stay)."""
        end = b.end if b.end is not None else len(text)
        if keep_tags:
            return text[b.start:end].strip()
        parts, pos = [], b.start
        i = bisect_left(tag_starts, b.start)
        while i < len(tags) and tags[i].end() <= end:
            parts.append(text[pos:tags[i].start()])
            pos = tags[i].end()
            i += 1
        parts.append(text[pos:end])
        return "".join(parts).strip()

    thinking = [t for b in blocks if b.name == "thinking" and (t := content(b, keep_tags=True))]
    reflections = [r for b in blocks if b.name == "reflection" and (r := content(b))]
    outputs = [content(b) for b in blocks if b.name == "output"]
    found = [o for o in outputs if o]
    if len(outputs) > 1:
        notes.append(f"{len(outputs)} <output> blocks, used the last non-empty one")
    flagged = False
    if found:
        output = found[-1]
    else:
        flagged = True
        rest = _outside(text, blocks)
        if rest:
            output = rest
            notes.append("empty <output>" if outputs else "no <output>")
            notes[-1] += ": used the text outside <thinking>"
        else:
            output = text.strip()
            notes.append(("empty <output>" if outputs else "no <output>") + ": whole text")
    return ReflectionParse(output=output, thinking="\n\n".join(thinking) or None,
                           reflections=reflections, flagged=flagged,
                           reason="; ".join(notes) or None)


def extract_output(text: str | None) -> tuple[str, bool]:
    """The final answer of a reply (for ``--output-only``) and whether it is a fallback."""
    parsed = parse_reflection(text)
    return parsed.output, parsed.flagged


def format_reflection(thinking: str, output: str, reflections: Sequence[str] = ()) -> str:
    """The canonical tagged text: reflections nested at the end of the thinking."""
    inner = thinking.strip()
    for r in reflections:
        inner += f"\n<reflection>\n{r.strip()}\n</reflection>"
    return f"<thinking>\n{inner.strip()}\n</thinking>\n<output>\n{output.strip()}\n</output>"


# ---------------------------------------------------------------- recycling stage


@lru_cache(maxsize=8)
def reflection_system_prompt(prompts_dir: str | Path | None = None) -> str:
    """The system prompt of the format (also the system turn of its training records)."""
    return (load_prompt("reflection_system", prompts_dir).system or "").strip()


def build_reflection_request(record: Record, prompt: Prompt, model: str, *,
                             with_example: bool = False, temperature: float = 0.0,
                             max_tokens: int = 2048) -> ChatRequest:
    """The oracle call that rewrites ``record``'s answer in the reflection format."""
    messages = prompt.messages(with_example=with_example, instruction=record.instruction,
                               input=record.input, output=record.output)
    return ChatRequest(messages=messages, model=model, temperature=temperature,
                       max_tokens=max_tokens)


def reask_messages(messages: list[dict[str, str]], reply: str,
                   reason: str) -> list[dict[str, str]]:
    """The conversation with a follow-up turn asking again for a well-formed reply."""
    follow = (f"Your reply is not in the required layout ({reason}). Write it again: the "
              "reasoning inside <thinking> ... </thinking> with at least one <reflection> ... "
              "</reflection> inside it, then the final answer inside <output> ... </output>, and "
              "nothing outside these tags.")
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": follow}]


def build_reflection_reask(request: ChatRequest, reply: str, reason: str) -> ChatRequest:
    """A follow-up request asking again for a well-formed reply (after a malformed one)."""
    return replace(request, messages=reask_messages(request.messages, reply, reason))


def canonical_reflection(parsed: ReflectionParse) -> str:
    """Rewrite a parsed (possibly repaired) reply in the canonical tagged layout."""
    inner, nested = _balanced_thinking(parsed.thinking or "")
    missing = list(parsed.reflections)
    for body in nested:
        if body in missing:
            missing.remove(body)
    return format_reflection(inner, parsed.output, missing)


def _balanced_thinking(thinking: str) -> tuple[str, list[str]]:
    """The thinking with its reflection tags re-balanced (closed where the model forgot), and
    the reflections it holds."""
    blocks, _ = _blocks(thinking, _tags(thinking, fences=True))
    pieces, bodies, pos = [], [], 0
    for b in (b for b in blocks if b.name == "reflection"):
        opening = thinking.rfind("<", 0, b.start)
        if opening < pos:
            continue
        end = b.end if b.end is not None else len(thinking)
        body = _TAG.sub("", thinking[b.start:end]).strip()
        pieces.append(_TAG.sub("", thinking[pos:opening]).strip())
        if body:
            bodies.append(body)
            pieces.append(f"<reflection>\n{body}\n</reflection>")
        pos = end
        if b.closed:
            close = thinking.find(">", end)
            pos = close + 1 if close != -1 else len(thinking)
    pieces.append(_TAG.sub("", thinking[pos:]).strip())
    return "\n".join(p for p in pieces if p), bodies


def check_reflection_reply(text: str | None) -> tuple[ReflectionParse, str | None]:
    """Parse an oracle rewrite; the second item is why it cannot be used (None when usable)."""
    parsed = parse_reflection(text)
    if parsed.flagged:
        return parsed, parsed.reason or "no <output>"
    if not parsed.thinking:
        return parsed, "no <thinking>"
    return parsed, None


def parse_reflection_reply(record: Record, text: str | None, *,
                           system: str | None = None) -> Record:
    """The ``reflection`` candidate made from an oracle rewrite of ``record``.

    Usable reply: ``output`` = the canonical tagged text, ``system`` = the reflection system
    prompt, ``parse_status`` "ok" (``fallback_reason`` notes any repair). Malformed reply:
    ``parse_status`` "fallback" with the reason, and the original pair unchanged, so the caller
    can re-ask (:func:`build_reflection_reask`) or keep the fallback.
    """
    parsed, problem = check_reflection_reply(text)
    if problem is not None:
        cand = record.derive("reflection", parse_status="fallback",
                             fallback_reason=f"{problem}, kept the original answer")
    else:
        notes = [parsed.reason] if parsed.reason else []
        if not parsed.reflections:
            notes.append("no <reflection>")
        cand = record.derive(
            "reflection", output=canonical_reflection(parsed),
            system=system if system is not None else reflection_system_prompt(),
            parse_status="ok", fallback_reason=("repaired: " + "; ".join(notes)) if notes else None)
    cand.raw = text
    cand.extra = {"derived_from": record.kind, "reflections": len(parsed.reflections)}
    return cand


async def reflection_candidate(
        engine: Any, record: Record, prompt: Prompt, model: str, *, with_example: bool = False,
        temperature: float = 0.0, max_tokens: int = 2048, reask: int = 1,
        system: str | None = None,
        request_for: Callable[[list[dict[str, str]]], ChatRequest] | None = None) -> Record:
    """The whole ``reflection-format`` stage for one record: ask, re-ask up to ``reask`` times
    while the reply is malformed, and build the candidate (``fallback`` with the reason when
    every reply was malformed). ``request_for`` turns a conversation into the request (the
    recycler's own: its sampling settings and context budget). Raises the engine's errors when
    the oracle cannot be reached."""
    request = build_reflection_request(record, prompt, model, with_example=with_example,
                                       temperature=temperature, max_tokens=max_tokens)
    if request_for is None:  # every re-ask keeps the first request's settings
        first = request
        request_for = lambda messages: replace(first, messages=messages)  # noqa: E731
    request = request_for(request.messages)
    text = (await engine.complete(request, stage="reflection-format")).text
    raws = [text]
    problem = (await off_loop(check_reflection_reply, text))[1]
    for _ in range(reask):
        if problem is None:
            break
        request = request_for(reask_messages(request.messages, text, problem))
        text = (await engine.complete(request, stage="reflection-format:reask")).text
        raws.append(text)
        problem = (await off_loop(check_reflection_reply, text))[1]
    cand = await off_loop(lambda t: parse_reflection_reply(record, t, system=system), text)
    cand.oracle_model, cand.prompt_id, cand.prompt_version = model, prompt.id, prompt.version
    cand.raw = "\n\n--- re-ask ---\n\n".join(raws)
    if len(raws) > 1:
        note = f"re-asked {len(raws) - 1}x"
        cand.fallback_reason = f"{cand.fallback_reason}; {note}" if cand.fallback_reason else note
    return cand


# ---------------------------------------------------------------- inference modes

MODES = ("format", "loop")
_VERDICT = re.compile(r"verdict\W{0,6}(correct|revise)", re.IGNORECASE)


def question_text(item: str | dict[str, Any], where: str = "questions", index: int = 0) -> str:
    """The question of one input item: a string, or a test-set record (see
    :func:`rtune.testsets.question_of`)."""
    from .errors import InputError
    from .testsets import question_of

    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise InputError(where, f"expected a string or an object, got {type(item).__name__}")
    return question_of(item, path=where, line=None, record=index)


def parse_verdict(critique: str) -> str | None:
    """``correct`` / ``revise`` from a critique's verdict line (the last one wins)."""
    found = _VERDICT.findall(critique or "")
    return found[-1].lower() if found else None


class Reflector:
    """Answers questions in one of the two modes over an engine (and its run store)."""

    def __init__(self, engine: Any, model: str, *, mode: str = "format", rounds: int = 2,
                 temperature: float = 0.0, max_tokens: int = 2048,
                 with_example: bool | None = None, prompts_dir: str | Path | None = None,
                 stop_when_correct: bool = True):
        from .errors import ConfigError

        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: choose from {', '.join(MODES)}")
        if rounds < 0:
            raise ConfigError("--rounds must be >= 0")
        self.engine, self.model, self.mode, self.rounds = engine, model, mode, rounds
        self.temperature, self.max_tokens = temperature, max_tokens
        if with_example is None:  # weak local models need a worked example; endpoints do not
            with_example = not str(getattr(engine.backend, "name", "")).startswith("http")
        self.with_example = with_example
        self.stop_when_correct = stop_when_correct
        self.prompt = load_prompt("reflection_system" if mode == "format" else "reflection_loop",
                                  prompts_dir)
        self.context_length = getattr(engine.backend, "context_length", None)

    @property
    def store(self) -> Any:
        return self.engine.store

    def key(self, question: str) -> str:
        blob = json.dumps([question, self.mode, self.rounds if self.mode == "loop" else 0,
                           self.model, self.prompt.tag, self.temperature, self.max_tokens,
                           self.with_example, self.stop_when_correct], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]

    def _request(self, messages: list[dict[str, str]]) -> ChatRequest:
        max_tokens = self.max_tokens
        if self.context_length:
            used = self.engine.backend.count_tokens("".join(m["content"] for m in messages))
            max_tokens = max(16, min(max_tokens, self.context_length - used - 8 * len(messages)))
        return ChatRequest(messages=messages, model=self.model, temperature=self.temperature,
                           max_tokens=max_tokens)

    async def _ask(self, messages: list[dict[str, str]], stage: str) -> str:
        result = await self.engine.complete(self._request(messages), stage=stage)
        return result.text

    async def answer(self, item: tuple[int, str, str]) -> dict[str, Any]:
        """One question -> its result dict (from the store when already answered)."""
        from .oracle.base import PermanentError, TransientError

        index, qid, question = item
        key = self.key(question)
        if self.store is not None:
            done = self.store.get_item(NAMESPACE, key)
            if done is not None:
                return {**done, "index": index, "id": qid}
        base = {"index": index, "id": qid, "question": question, "mode": self.mode,
                "model": self.model}
        try:
            body = await (self._format(question) if self.mode == "format"
                          else self._loop(question))
        except (TransientError, PermanentError) as e:  # not stored: the next run retries it
            return {**base, "answer": None, "error": str(e)}
        result = {**base, **body}
        if self.store is not None:
            self.store.put_item(NAMESPACE, key, result)
        return result

    async def _format(self, question: str) -> dict[str, Any]:
        text = await self._ask(self.prompt.messages(with_example=self.with_example,
                                                    question=question), "reflect")
        parsed = await off_loop(parse_reflection, text)
        return {"answer": parsed.output, "flagged": parsed.flagged, "reason": parsed.reason,
                "thinking": parsed.thinking, "reflections": parsed.reflections, "text": text}

    async def _loop(self, question: str) -> dict[str, Any]:
        prompt, system = self.prompt, self.prompt.system
        head = [{"role": "system", "content": system.strip()}] if system else []

        def turn(template: str, **variables: Any) -> list[dict[str, str]]:
            from dataclasses import replace

            return [*head, {"role": "user",
                            "content": replace(prompt, user=template).render_user(**variables)}]

        answer = await self._ask(prompt.messages(question=question), "reflect:draft")
        rounds: list[dict[str, Any]] = [{"round": 0, "answer": answer}]
        stopped_early = False
        for r in range(1, self.rounds + 1):
            critique = await self._ask(turn(prompt.extra["critique"], question=question,
                                            answer=answer), "reflect:critique")
            verdict = parse_verdict(critique)
            step: dict[str, Any] = {"round": r, "critique": critique, "verdict": verdict}
            rounds.append(step)
            if verdict == "correct" and self.stop_when_correct:
                stopped_early = True
                break
            answer = await self._ask(turn(prompt.extra["revise"], question=question,
                                          answer=answer, critique=critique), "reflect:revise")
            step["answer"] = answer
        final, flagged = await off_loop(extract_output, answer)
        if flagged:  # a plain answer (the usual case): the whole revision is the answer
            final = answer.strip()
        thinking = rounds[0]["answer"].strip()
        for step in rounds[1:]:
            thinking += f"\n<reflection>\n{step['critique'].strip()}\n</reflection>"
            if "answer" in step and step is not rounds[-1]:
                thinking += "\n" + step["answer"].strip()
        return {"answer": final, "flagged": False, "reason": None, "rounds": rounds,
                "stopped_early": stopped_early, "reflections": [s["critique"] for s in rounds[1:]],
                "thinking": thinking,
                "text": f"<thinking>\n{thinking}\n</thinking>\n<output>\n{final}\n</output>"}

    async def answer_all(self, questions: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
        items = _items(questions)
        results = [r async for r in self.engine.map(self.answer, items)]
        return sorted(results, key=lambda r: r["index"])


def _items(questions: Iterable[str | dict[str, Any]]) -> list[tuple[int, str, str]]:
    from .testsets import question_id

    items = []
    for i, q in enumerate(questions):
        qid = question_id(q, i) if isinstance(q, dict) else str(i)
        items.append((i, qid, question_text(q, "questions", i)))
    return items


def default_model_name(oracle: str, model: str | None) -> str:
    if model:
        return model
    return "smollm2-135m-instruct" if oracle in ("local", "llamacpp") else oracle


def reflect(questions: Iterable[str | dict[str, Any]], *, engine: Any = None,
            oracle: str = "local", model: str | None = None, mode: str = "format",
            rounds: int = 2, run_dir: str | Path | None = None, temperature: float = 0.0,
            max_tokens: int = 2048, with_example: bool | None = None,
            prompts_dir: str | Path | None = None, concurrency: int = 16,
            api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
            rpm: float | None = None, tpm: float | None = None, max_retries: int = 6,
            context_length: int | None = None, batch_size: int = 8,
            prices: Any = None, stop_when_correct: bool = True) -> list[dict[str, Any]]:
    """Answer ``questions`` in the reflection format (``mode="format"``: one call with the
    reflection system prompt) or by self-reflection (``mode="loop"``: draft, then ``rounds`` x
    critique + revise, every round kept). Results come back in input order; each has
    ``answer`` (the final answer), ``thinking``, ``reflections``, ``text`` (the tagged text),
    ``flagged``/``reason`` (format mode: no usable ``<output>``), ``rounds`` (loop mode), or
    ``error`` when the model could not be reached (not stored; a rerun retries it).

    With ``run_dir`` (or an ``engine`` that has a store) every call and every result is kept in
    the run store: a rerun pays nothing for what is done.
    """
    from .errors import ConfigError
    from .oracle import Engine, EngineConfig, make_backend
    from .oracle.engine import check_settings
    from .store import RunStore

    if mode not in MODES:  # checked before any model loads
        raise ConfigError(f"--mode {mode!r}: choose from {', '.join(MODES)}")
    if rounds < 0:
        raise ConfigError("--rounds must be >= 0")
    check_settings(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout,
                   max_retries=max_retries, batch_size=batch_size, max_tokens=max_tokens,
                   context_length=context_length)
    items = _items(questions)
    store = None
    name = model or (str(engine.backend.name) if engine is not None
                     else default_model_name(oracle, model))
    if engine is None:
        if oracle.startswith(("http://", "https://")) and not model:
            raise ConfigError("--model is required with an HTTP oracle (the served model name)")
        store = RunStore(run_dir, writer="reflect") if run_dir is not None else None
        backend = make_backend(oracle, model=model, api_key_env=api_key_env, timeout=timeout,
                               context_length=context_length, batch_size=batch_size)
        engine = Engine(backend, store, EngineConfig(
            concurrency=concurrency, rpm=rpm, tpm=tpm, max_retries=max_retries, timeout=timeout,
            **({"prices": prices} if prices is not None else {})))
    try:
        reflector = Reflector(engine, name, mode=mode, rounds=rounds, temperature=temperature,
                              max_tokens=max_tokens, with_example=with_example,
                              prompts_dir=prompts_dir, stop_when_correct=stop_when_correct)
        if engine.store is not None:
            engine.store.set_meta("reflect", {"mode": mode, "rounds": rounds, "model": name})
        results = engine.run(reflector.answer, items)
    finally:
        if store is not None:
            store.close()
    return sorted(results, key=lambda r: r["index"])


# ---------------------------------------------------------------- special tokens


def add_reflection_special_tokens(tokenizer: Any, model: Any = None, *,
                                  special: bool = False) -> int:
    """Give each of the six tags one token id and resize ``model``'s embeddings to match.

    Off by default in training. By default the tags become added (not special) tokens: atomic,
    yet kept by ``decode(skip_special_tokens=True)``; ``special=True`` registers them as special
    tokens, which such a decode strips, so the parser would then find no tags. New rows are
    drawn around the mean of the old embeddings (``mean_resizing``). Returns how many tokens were new.
    """
    added = tokenizer.add_tokens(list(SPECIAL_TOKENS), special_tokens=special)
    if model is not None and added:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return added


__all__ = ["MODES", "SPECIAL_TOKENS", "TAGS", "ReflectionParse", "Reflector",
           "add_reflection_special_tokens", "build_reflection_reask", "build_reflection_request",
           "canonical_reflection", "check_reflection_reply", "extract_output",
           "format_reflection", "parse_reflection", "parse_reflection_reply", "question_text",
           "reask_messages", "reflect", "reflection_candidate", "reflection_system_prompt"]
