"""A local transformers model as an oracle backend, with a micro-batcher.

The engine awaits :meth:`LocalBackend.complete` concurrently; requests are queued, and a single
worker gathers them into length-sorted, left-padded batches that run in a thread (the event
loop stays free). Greedy batched output equals one-at-a-time output.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..guided import GuidedSpec, from_json, provenance
from ..models import context_length, load_model, load_tokenizer, model_name
from .base import ChatRequest, ChatResult, PermanentError

_PLAIN_TEMPLATE = (  # for tokenizers without a chat template (base models)
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


@dataclass
class _Job:
    request: ChatRequest
    ids: list[int]
    max_new: int
    future: asyncio.Future[ChatResult]
    key: str = ""

    @property
    def group(self) -> tuple:
        sample = self.request.temperature > 0
        return (sample, self.request.temperature if sample else 0.0,
                self.request.top_p if sample else 1.0)


@dataclass
class GenerationOutput:
    text: str
    tokens_out: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    token_ids: list[int] = field(default_factory=list)
    guided: dict[str, Any] | None = None  # how the row was guided (None: not asked to be)


class LocalBackend:
    """Oracle backend over a local model: ``local`` (embedded SmolLM2), an HF folder or a GGUF.

    ``timeout`` is not applied here, nor by the engine (``runs_locally``): a running batch
    cannot be interrupted, and waiting in the queue behind other batches is not a fault.
    """

    runs_locally = True

    def __init__(self, spec: str = "local", *, batch_size: int = 8, device: str = "auto",
                 dtype: Any = None, max_wait_s: float = 0.05):
        self.spec = spec
        self.name = model_name(spec)
        self.tokenizer = load_tokenizer(spec)  # converts a GGUF once; the model loads lazily
        self.context_length: int | None = context_length(spec)
        self.batch_size = max(1, int(batch_size))
        self.max_wait_s = max_wait_s
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._lock = threading.Lock()  # one generation at a time, even across event loops
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Future[ChatResult]] = {}
        self._guide: Any = None

    # -- Backend protocol ------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        self._ensure_worker()
        key = request.key()
        future = self._inflight.get(key)
        if future is None:
            ids = self.prompt_ids(request.messages)
            room = (self.context_length or 1 << 30) - len(ids)
            if room < 1:
                raise PermanentError("context_length", f"the prompt has {len(ids)} tokens; "
                                     f"{self.name} takes {self.context_length}")
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            future.add_done_callback(lambda _f, k=key: self._inflight.pop(k, None))
            assert self._queue is not None
            self._queue.put_nowait(_Job(request, ids, min(request.max_tokens, room), future, key))
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        for future in list(self._inflight.values()):
            future.cancel()
        self._inflight.clear()
        self._queue = None
        self._loop = None

    # -- prompts and generation (usable without the event loop) -----------------------------

    def prompt_ids(self, messages: Any) -> list[int]:
        """The chat template applied with the generation prompt, as token ids."""
        template = None if self.tokenizer.chat_template else _PLAIN_TEMPLATE
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True,
            chat_template=template)
        return self.tokenizer.encode(text, add_special_tokens=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model, _ = load_model(self.spec, device=self.device, dtype=self.dtype)
        return self._model

    def generate(self, prompts: list[list[int]], *, max_new: list[int],
                 stops: list[tuple[str, ...] | None], temperature: float = 0.0,
                 top_p: float = 1.0, cancel: threading.Event | None = None,
                 guided: list[GuidedSpec | None] | None = None) -> list[GenerationOutput]:
        """One left-padded batch through ``model.generate``; rows stop on EOS, their own stop
        strings or their own token budget. Setting ``cancel`` (from any thread) ends the batch
        after the token being computed; its outputs are then cut short and not to be used.
        A row with a ``guided`` spec is decoded under its shape's grammar (llguidance); a JSON
        reply comes back as the shape's marked text."""
        import torch

        with self._lock:
            model = self.model
            pad = self.tokenizer.pad_token_id
            width = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            eos = _eos_ids(model, self.tokenizer)
            rows = _RowStop(self.tokenizer, width, max_new, stops, eos)
            criteria = StoppingCriteriaList([rows] + ([_Cancelled(cancel)] if cancel else []))
            kwargs: dict[str, Any] = {"do_sample": False}
            specs = guided if guided and any(guided) else None
            grammar = None
            if specs is not None:
                grammar = self.guide(eos).processor(specs, width, rows.done)
                kwargs["logits_processor"] = LogitsProcessorList([grammar])
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                    max_new_tokens=max(max_new), pad_token_id=pad, eos_token_id=eos,
                    stopping_criteria=criteria, **kwargs)
            results = []
            for i, row in enumerate(out[:, width:].tolist()):
                n, reason = rows.done[i] or (len(row), "length")
                kept = row[:n] if grammar is None else grammar.kept(i, row[:n])
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                cut = _first_stop(text, stops[i])
                if cut is not None:
                    text, reason = text[:cut], "stop"
                how = None
                if specs is not None and specs[i] is not None:
                    text, how = _guided_text(specs[i], text, grammar, i)
                results.append(GenerationOutput(text, n, reason, row[:n], how))
            if grammar is not None:
                grammar.finish()
            return results

    def guide(self, eos: list[int]) -> Any:
        """The llguidance view of this backend's tokenizer (built on first use)."""
        if self._guide is None:
            from .guided_local import LocalGuide

            self._guide = LocalGuide(self.tokenizer, eos)
        return self._guide

    # -- the micro-batcher ------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            if self._loop is not loop:  # a new event loop (engine.run per stage): start afresh
                self._inflight.clear()
                self._queue = asyncio.Queue()
            self._loop = loop
            self._worker = loop.create_task(self._work(), name="rtune-local-batcher")
            self._worker.add_done_callback(self._worker_died)

    def _worker_died(self, task: asyncio.Task[None]) -> None:
        """A bug in the batcher must fail the waiting calls, not leave them hanging."""
        if task.cancelled() or task.exception() is None:
            return
        error = PermanentError("local_batcher", repr(task.exception()))
        for future in list(self._inflight.values()):
            if not future.done() and future.get_loop() is task.get_loop():
                future.set_exception(error)

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(jobs) < self.batch_size and (left := deadline - loop.time()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            while not queue.empty() and len(jobs) < 4 * self.batch_size:
                jobs.append(queue.get_nowait())
            # One round: everything gathered, grouped by sampling settings, sorted by length.
            for batch in self._plan([j for j in jobs if not j.future.done()]):
                batch = [j for j in batch if not j.future.done()]
                if batch:
                    await self._run_batch(batch)

    def _plan(self, jobs: list[_Job]) -> list[list[_Job]]:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        batches = []
        for group in groups.values():
            group.sort(key=lambda j: len(j.ids))
            batches += [group[i:i + self.batch_size]
                        for i in range(0, len(group), self.batch_size)]
        return batches

    async def _run_batch(self, batch: list[_Job]) -> None:
        req = batch[0].request
        # A thread can't be cancelled: without this flag Ctrl-C (which cancels this task) would
        # wait for the whole batch, minutes on a CPU, when asyncio.run joins its threads.
        cancel = threading.Event()
        try:
            outputs = await asyncio.to_thread(
                self.generate, [j.ids for j in batch], max_new=[j.max_new for j in batch],
                stops=[j.request.stop for j in batch], temperature=req.temperature,
                top_p=req.top_p, cancel=cancel, guided=[j.request.guided for j in batch])
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Exception as e:  # noqa: BLE001 - handed to every waiter of this batch
            error = e if isinstance(e, PermanentError) else PermanentError(
                "local_generation", f"{type(e).__name__}: {e}")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, out in zip(batch, outputs):
            if not job.future.done():
                job.future.set_result(ChatResult(
                    text=out.text, tokens_in=len(job.ids), tokens_out=out.tokens_out,
                    finish_reason=out.finish_reason, model=self.name,
                    extra={"guided": out.guided} if out.guided else {}))


class _RowStop(StoppingCriteria):
    """Per-row stopping: EOS, the row's own stop strings, the row's own token budget.
    Records ``done[i] = (tokens generated, finish_reason)``."""

    def __init__(self, tokenizer: Any, width: int, max_new: list[int],
                 stops: list[tuple[str, ...] | None], eos: list[int]):
        self.tokenizer = tokenizer
        self.width = width
        self.max_new = max_new
        self.stops = [tuple(s for s in (st or ()) if s) for st in stops]
        self.tail = [max((len(s) for s in st), default=0) + 8 for st in self.stops]
        self.eos = set(eos)
        self.done: list[tuple[int, str] | None] = [None] * len(max_new)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        gen = input_ids[:, self.width:]
        n = gen.shape[1]
        for i in range(gen.shape[0]):
            if self.done[i] is not None:
                continue
            if int(gen[i, -1]) in self.eos:
                self.done[i] = (n, "stop")
            elif self.stops[i] and _first_stop(self.tokenizer.decode(
                    gen[i, -self.tail[i]:], skip_special_tokens=True), self.stops[i]) is not None:
                self.done[i] = (n, "stop")
            elif n >= self.max_new[i]:
                self.done[i] = (n, "length")
        return torch.tensor([d is not None for d in self.done], device=input_ids.device)


class _Cancelled(StoppingCriteria):
    """Ends every row once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def _guided_text(spec: GuidedSpec, text: str, grammar: Any,
                 row: int) -> tuple[str, dict[str, Any]]:
    """A guided row's text (a JSON reply mapped to the marked text) and its provenance."""
    from .guided_local import ENGINE

    used = "grammar" if spec.mode == "auto" else spec.mode
    note = grammar.errors.get(row)
    if spec.mode == "json":
        marked = from_json(spec.shape, text)
        if marked is not None:
            text = marked
        else:
            note = note or "the JSON reply is incomplete (cut at max tokens)"
    return text, provenance(spec.mode, used, ENGINE, note, grammar.looped(row))


def _first_stop(text: str, stops: tuple[str, ...] | None) -> int | None:
    hits = [text.find(s) for s in (stops or ()) if s and s in text]
    return min(hits) if hits else None


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
