"""The ``reflection-format`` recycling stage: an oracle rewrites each answer in the Reflection 70B
format (``<thinking>`` with nested ``<reflection>``, then ``<output>``); the reply is parsed by
:mod:`rtune.reflection`, re-asked once when it misses the format, then kept or falls back with
the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .guided import guided_extra
from .linear import off_loop
from .oracle.base import ChatRequest
from .prompts import Prompt, load_prompt
from .records import Record
from .reflection import canonical_reflection, check_reflection_reply


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
    reply = await engine.complete(request, stage="reflection-format")
    text, guided, cut = reply.text, reply.extra.get("guided"), reply.finish_reason == "length"
    raws = [text]
    problem = (await off_loop(check_reflection_reply, text))[1]
    for _ in range(reask):
        if problem is None:
            break
        request = request_for(reask_messages(request.messages, text, problem))
        again = await engine.complete(request, stage="reflection-format:reask")
        text, cut = again.text, cut or again.finish_reason == "length"
        raws.append(text)
        problem = (await off_loop(check_reflection_reply, text))[1]
    cand = await off_loop(lambda t: parse_reflection_reply(record, t, system=system), text)
    cand.oracle_model, cand.prompt_id, cand.prompt_version = model, prompt.id, prompt.version
    cand.raw = "\n\n--- re-ask ---\n\n".join(raws)
    notes = [f"re-asked {len(raws) - 1}x"] if len(raws) > 1 else []
    if cut:
        notes.append("reply cut at max tokens")
    if notes:
        cand.fallback_reason = "; ".join(filter(None, [cand.fallback_reason, *notes]))
    cand.extra.update(guided_extra(guided, cut))
    return cand
