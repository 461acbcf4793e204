"""Guided replies from OpenAI-compatible endpoints: which request field carries the shape, and
finding out, once per server, which fields it takes.

What servers read (each ignores or refuses the others): vLLM ``structured_outputs``
(``{"regex": ...}`` / ``{"grammar": ...}``, newer versions) and ``guided_regex`` /
``guided_grammar`` (older ones); SGLang ``regex``; llama.cpp server ``grammar`` (GBNF); OpenAI
and most others ``response_format`` with a JSON schema. ``auto`` tries the regex fields, then
the grammar fields, then the JSON schema (the JSON schema first for api.openai.com).

A field is refused when the server answers 400 or 422 to the request carrying it while the
same call without it succeeds (one call finds that out: it tries the next field at once, and
its reply is used). A field is ignored when a complete reply (finish reason ``stop``) is not in
the shape, which a server applying it cannot write. Both are detected once; later calls go
straight to the next field, or unguided when none is left, and every call's provenance says
which field carried it, or why none did.

Batch lines (the Batch API, an offline engine's batch runner) reach no server that could be
probed: each carries one field (:func:`batch_flavor`), and each reply is checked on its own
(:func:`check_reply`) when it is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..guided import GuidedSpec, from_json, provenance
from ..guided_forms import conforms, gbnf, regex, response_format
from .base import ChatRequest, ChatResult, PermanentError

REFUSALS = ("bad_request", "http_422")  # what a server answers to a field it does not take


@dataclass(frozen=True)
class Flavor:
    name: str  # the request field, as recorded in provenance
    mode: str  # regex | grammar | json
    fields: Callable[[Any], dict[str, Any]]


FLAVORS = {
    "regex": (Flavor("structured_outputs.regex", "regex",
                     lambda s: {"structured_outputs": {"regex": regex(s)}}),
              Flavor("guided_regex", "regex", lambda s: {"guided_regex": regex(s)}),
              Flavor("regex", "regex", lambda s: {"regex": regex(s)})),
    "grammar": (Flavor("grammar", "grammar", lambda s: {"grammar": gbnf(s)}),
                Flavor("structured_outputs.grammar", "grammar",
                       lambda s: {"structured_outputs": {"grammar": gbnf(s)}}),
                Flavor("guided_grammar", "grammar", lambda s: {"guided_grammar": gbnf(s)})),
    "json": (Flavor("response_format", "json", lambda s: {"response_format": response_format(s)}),),
}


def batch_flavor(mode: str) -> Flavor:
    """The field batch lines carry for the ``--guided`` ``mode``: nothing can be probed, so
    auto is the JSON schema (OpenAI's Batch API and vLLM's batch runner both take it); regex
    and grammar are vLLM's fields."""
    return FLAVORS["json" if mode == "auto" else mode][0]


def check_reply(spec: GuidedSpec, flavor: Flavor, result: ChatResult, *,
                trusted: bool = False, note: str | None = None) -> str:
    """Check a reply that ``flavor`` carried against the shape (a JSON reply is mapped back
    into the marked text) and record its provenance. Returns ``ok``; ``ignored`` when a
    complete reply is not in the shape (recorded unguided); else ``cut``. ``trusted``: the
    server applied the field before, so a regex or grammar reply is not checked, and one not
    in the shape counts as cut."""
    if flavor.mode == "json":
        marked = from_json(spec.shape, result.text)
        ok = marked is not None
        if marked is not None:
            result.text = marked
    else:
        ok = trusted or conforms(spec.shape, result.text)
    if not ok and result.finish_reason == "stop" and not trusted:
        why = f"the server ignored {flavor.name}"
        result.extra["guided"] = provenance(spec.mode, None, flavor.name,
                                            "; ".join(filter(None, [note, why])))
        return "ignored"
    if not ok:
        note = "; ".join(filter(None, [note, "reply cut before it was complete"]))
    result.extra["guided"] = provenance(spec.mode, flavor.mode, flavor.name, note)
    return "ok" if ok else "cut"


class GuidedEndpoint:
    """What one server takes, learnt as calls go: per field ``accepted`` or ``refused: why``;
    absent while unknown. While the first field left is unknown, one call at a time probes it
    (the others wait for the answer)."""

    def __init__(self, base_url: str):
        self.openai = "api.openai.com" in base_url
        self.state: dict[str, str] = {}
        self._locks: dict[int, asyncio.Lock] = {}  # by event loop

    def flavors(self, spec: GuidedSpec) -> list[Flavor]:
        """The fields to try for ``spec``, in order, less those found refused."""
        if spec.mode == "auto":
            order = ("json", "regex", "grammar") if self.openai else ("regex", "grammar", "json")
            found = [f for mode in order for f in FLAVORS[mode]]
        else:
            found = list(FLAVORS[spec.mode])
        return [f for f in found if not self.state.get(f.name, "").startswith("refused")]

    def report(self) -> dict[str, str]:
        return dict(sorted(self.state.items()))

    async def complete(self, backend: Any, request: ChatRequest, body: dict[str, Any],
                       timeout: float | None) -> ChatResult:
        spec = request.guided
        assert spec is not None
        flavors = self.flavors(spec)
        if not flavors or self.state.get(flavors[0].name) == "accepted":
            return await self._call(backend, request, body, timeout, flavors[:1])
        lock = self._locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock())
        async with lock:  # probe: one call at a time until the first field left is known
            return await self._call(backend, request, body, timeout, self.flavors(spec))

    async def _call(self, backend: Any, request: ChatRequest, body: dict[str, Any],
                    timeout: float | None, flavors: list[Flavor]) -> ChatResult:
        spec = request.guided
        assert spec is not None
        refused: list[tuple[Flavor, str]] = []
        for flavor in [*flavors, None]:
            sent = body if flavor is None else {**body, **flavor.fields(spec.shape)}
            try:
                reply = await backend.post(sent, timeout)
            except PermanentError as e:
                if flavor is None or e.reason not in REFUSALS:
                    raise
                refused.append((flavor, str(e)[:200]))
                continue
            for f, why in refused:
                self.state[f.name] = f"refused: {why}"
            result = backend._result(reply, request)
            self._settle(spec, flavor, result, [f.name for f, _ in refused])
            return result
        raise AssertionError("unreachable: the unguided request returns or raises")

    def _settle(self, spec: GuidedSpec, flavor: Flavor | None, result: ChatResult,
                refused: list[str]) -> None:
        """Check the reply against the shape, learn from it, record the call's provenance."""
        note = f"refused by the server: {', '.join(refused)}" if refused else None
        if flavor is None:
            left = ", ".join(f.name for f in self.flavors(spec)) or "none"
            result.extra["guided"] = provenance(spec.mode, None, note=note or
                                                f"no guided field left to try ({left})")
            return
        verdict = check_reply(spec, flavor, result, note=note,
                              trusted=self.state.get(flavor.name) == "accepted")
        if verdict == "ok":
            self.state[flavor.name] = "accepted"
        elif verdict == "ignored":
            self.state[flavor.name] = "refused: ignored (a complete reply was not in the shape)"
