"""Answering questions in the Reflection 70B format (``rtune reflect``), in two modes:
``format`` = one call with the reflection system prompt, ``loop`` = draft, critique, revise with
any model; each answer's ``<output>`` part is what evaluators score.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .cli_fields import settings_field
from .endpoint_config import EndpointConfig, check_settings
from .linear import off_loop
from .model_spec import is_url
from .oracle.base import ChatRequest
from .prompts import load_prompt
from .reflection import extract_output, parse_reflection

NAMESPACE = "reflect"  # run-store namespace of `rtune reflect` results

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
                 stop_when_correct: bool = True, guided: str | None = None,
                 loop_guard: int = 0):
        from .errors import ConfigError
        from .guided import check_guided, check_prompt, guided_default, guided_spec, reflection

        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: choose from {', '.join(MODES)}")
        if rounds < 0:
            raise ConfigError("--rounds must be >= 0")
        self.engine, self.model, self.mode, self.rounds = engine, model, mode, rounds
        self.temperature, self.max_tokens = temperature, max_tokens
        if with_example is None:  # weak local models need a worked example; endpoints do not
            with_example = not is_url(str(getattr(engine.backend, "name", "")))
        self.with_example = with_example
        self.stop_when_correct = stop_when_correct
        self.prompt = load_prompt("reflection_system" if mode == "format" else "reflection_loop",
                                  prompts_dir)
        self.context_length = getattr(engine.backend, "context_length", None)
        # format mode: the three tags (reflections optional, as the system prompt says)
        spec = str(getattr(engine.backend, "name", ""))
        guided = guided_default(check_guided(guided), spec)
        self.guided = None
        if mode == "format":
            check_prompt(reflection(0), self.prompt, "reflection format")
            self.guided = guided_spec(reflection(0), guided, spec, loop_guard)

    @property
    def store(self) -> Any:
        return self.engine.store

    def key(self, question: str) -> str:
        blob = json.dumps([question, self.mode, self.rounds if self.mode == "loop" else 0,
                           self.model, self.prompt.tag, self.temperature, self.max_tokens,
                           self.with_example, self.stop_when_correct]
                          + ([self.guided.describe()] if self.guided else []), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]

    def _request(self, messages: list[dict[str, str]], guided: Any = None) -> ChatRequest:
        max_tokens = self.max_tokens
        if self.context_length:
            used = self.engine.backend.count_tokens("".join(m["content"] for m in messages))
            max_tokens = max(16, min(max_tokens, self.context_length - used - 8 * len(messages)))
        return ChatRequest(messages=messages, model=self.model, temperature=self.temperature,
                           max_tokens=max_tokens, guided=guided)

    async def _ask(self, messages: list[dict[str, str]], stage: str, guided: Any = None) -> str:
        result = await self.engine.complete(self._request(messages, guided), stage=stage)
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
                                                    question=question), "reflect", self.guided)
        parsed = await off_loop(parse_reflection, text)
        return {"answer": parsed.output, "flagged": parsed.flagged, "reason": parsed.reason,
                "thinking": parsed.thinking, "reflections": parsed.reflections, "text": text}

    async def _loop(self, question: str) -> dict[str, Any]:
        prompt, system = self.prompt, self.prompt.system
        head = [{"role": "system", "content": system.strip()}] if system else []

        def turn(template: str, **variables: Any) -> list[dict[str, str]]:

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


@dataclass
class ReflectConfig(EndpointConfig):
    """The model (:class:`~rtune.endpoint_config.EndpointConfig`'s fields) and how it answers."""

    mode: str = settings_field(
        "format", "format: one call with the reflection system prompt; loop: draft, then "
        "critique + revise for --rounds rounds", choices=MODES)
    rounds: int = settings_field(
        2, "loop mode: critique/revise rounds (stops early on 'Verdict: correct')")
    temperature: float = settings_field(0.0, "sampling temperature")
    max_tokens: int = settings_field(2048, "reply budget per call")
    prompts_dir: str | None = settings_field(
        None, "folder of prompt YAML files overriding the packaged ones by name",
        flag="--prompts", metavar="DIR")
    with_example: bool | None = None  # format mode: a worked example; None: local models only
    stop_when_correct: bool = True  # loop mode: stop at a critique's 'Verdict: correct'
    guided: str | bool | None = None  # format mode: None: auto for a local model, off else

    def __post_init__(self, oracle: str | None = None) -> None:
        from .errors import ConfigError
        from .guided import check_guided

        if self.mode not in MODES:  # checked before any model loads
            raise ConfigError(f"--mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.rounds < 0:
            raise ConfigError("--rounds must be >= 0")
        check_guided(self.guided)
        super().__post_init__(oracle)
        check_settings(max_tokens=self.max_tokens)


def reflect(questions: Iterable[str | dict[str, Any]], config: ReflectConfig | None = None, *,
            engine: Any = None, run_dir: str | Path | None = None,
            **settings: Any) -> list[dict[str, Any]]:
    """Answer ``questions`` in the reflection format (``mode="format"``: one call with the
    reflection system prompt) or by self-reflection (``mode="loop"``: draft, then ``rounds`` x
    critique + revise, every round kept). Results come back in input order; each has
    ``answer`` (the final answer), ``thinking``, ``reflections``, ``text`` (the tagged text),
    ``flagged``/``reason`` (format mode: no usable ``<output>``), ``rounds`` (loop mode), or
    ``error`` when the model could not be reached (not stored; a rerun retries it).
    ``settings``: :class:`ReflectConfig` fields, over ``config`` (e.g. ``oracle=URL,
    model=NAME, mode="loop"``).

    With ``run_dir`` (or an ``engine`` that has a store) every call and every result is kept in
    the run store: a rerun pays nothing for what is done.
    """
    from .store import RunStore

    config = replace(config, **settings) if config is not None else ReflectConfig(**settings)
    items = _items(questions)
    store = None
    name = config.model or (str(engine.backend.name) if engine is not None
                            else config.model_spec.request_name)
    if engine is None:
        store = RunStore(run_dir, writer="reflect") if run_dir is not None else None
        engine = config.engine(store)
    try:
        reflector = Reflector(engine, name, mode=config.mode, rounds=config.rounds,
                              temperature=config.temperature, max_tokens=config.max_tokens,
                              with_example=config.with_example, prompts_dir=config.prompts_dir,
                              stop_when_correct=config.stop_when_correct, guided=config.guided,
                              loop_guard=config.loop_guard)
        if engine.store is not None:
            engine.store.set_meta("reflect", {"mode": config.mode, "rounds": config.rounds,
                                              "model": name})
        results = engine.run(reflector.answer, items)
    finally:
        if store is not None:
            store.close()
    return sorted(results, key=lambda r: r["index"])
