"""Calls answered later: the engine of the batch and export modes.

The recycler runs as it does online, and every call whose reply is already in the run store
is answered from it. A call that has none is handed to ``route`` instead of the backend: it
is recorded to go out in the next batch (or exported file) and :class:`Deferred` is raised, so
the stage waits and the recycler moves on. Running the recycler again after the results are in
the store takes every record one stage further (instruction before both, a reply before the
re-ask that repairs it): the rounds. ``route`` may also send a call online now (a request the
batch could not answer) or raise the error that stands for it.

A guided request's reply that came in a batch line has no provenance yet when it is first read:
it is checked then as the online path checks a reply (:func:`~rtune.oracle.guided_http.
check_reply`; a JSON reply mapped back into the marked text) and stored as that path stores it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..guided import NAMESPACE as GUIDED
from ..text import repair_text
from .base import ChatRequest, ChatResult
from .engine import Engine
from .guided_http import batch_flavor, check_reply


class Deferred(Exception):
    """The call has no reply yet: its request waits for a batch result."""

    def __init__(self, key: str):
        super().__init__(f"request {key[:12]} waits for a batch result")
        self.key = key


# route(key, request, stage) -> True: call the backend now; False: defer
Route = Callable[[str, ChatRequest, "str | None"], bool]


class DeferringEngine(Engine):
    """An :class:`~rtune.oracle.engine.Engine` whose calls without a stored reply go to
    ``route``; ``answered(key)`` is told of each call that then ran online."""

    def __init__(self, engine: Engine, route: Route,
                 answered: Callable[[str], None] | None = None):
        super().__init__(engine.backend, engine.store, engine.config, on_call=engine.on_call)
        self.route = route
        self.answered = answered
        self.deferred = 0

    async def complete(self, request: ChatRequest, *, stage: str | None = None) -> ChatResult:
        result = await super().complete(request, stage=stage)
        spec = request.guided
        if spec is not None and result.cached and "guided" not in result.extra:
            check_reply(spec, batch_flavor(spec.mode), result)
            result.text = repair_text(result.text)[0]
            if self.store is not None:
                self.store.revise_call(request.key(), result.text, GUIDED,
                                       result.extra["guided"])
        return result

    async def _call_once(self, request: ChatRequest, key: str,
                         stage: str | None) -> ChatResult:
        if not self.route(key, request, stage):
            self.deferred += 1
            raise Deferred(key)
        result = await super()._call_once(request, key, stage)
        if self.answered is not None:
            self.answered(key)
        return result
