"""``--mode batch``: recycling through the OpenAI Batch API, in rounds, safe to kill anywhere.

One step: finish any submission that was cut off, poll the batches out, download and import
the finished ones, run a round (:class:`~rtune.recycle_rounds.RoundsRun`) and submit what it
left pending. Without ``wait`` the command does one step and exits; the same command later
does the next. With ``wait`` it steps every ``poll_interval`` seconds until nothing is
pending or out.

Nothing is lost or sent twice across a ``kill -9``: a batch's requests are assigned to it in
the store (its *intent*, with an id of rtune's own) before its file is uploaded; its file is
uploaded under the name ``rtune-<id>.jsonl`` and the batch created with ``metadata.rtune_batch
= <id>``; each id the API returns is stored at once. A rerun that finds an intent without a
file id or batch id first looks for them in the API's listings and adopts what it finds, and
creates them only when nothing is there. Results are stored before their batch counts as
collected, and importing them again changes nothing.

A line that failed for a passing reason (expired, cancelled, a server error, a batch the API
lost, a line missing from the output) goes out again in a later batch, at most ``retries``
times; one that cannot succeed as sent (a 400) fails at once, context-length errors taking
the online path's rule (the answer cut in half, asked again). ``fallback_online`` sends failed
lines online instead. Every reason is kept for ``rtune status``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch_import import FileReport, Importer
from .oracle.batch_api import BatchApi, Gone, Unavailable
from .oracle.batch_files import request_line
from .recycle_config import RecycleConfig
from .recycle_rounds import BatchOptions, RoundReport, RoundsRun

META_KEY = "rtune_batch"
_REASON = {"expired": ("expired", "not run within the batch's 24 h window"),
           "cancelled": ("cancelled", "the batch was cancelled"),
           "failed": ("batch_failed", "the batch failed"),
           "completed": ("missing", "missing from the batch's output and error files")}


@dataclass
class BatchSummary:
    run_dir: str
    rounds: list[RoundReport] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # API batch ids created by this call
    collected: list[str] = field(default_factory=list)
    imports: list[FileReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each: what went wrong where
    active: int = 0  # batches still running at the API
    pending: int = 0  # requests waiting to be submitted
    failed: int = 0  # requests given up (their reasons in rtune status)
    output: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return not self.active and not self.pending

    @property
    def failures(self) -> dict[str, int]:
        return self.rounds[-1].failures if self.rounds else {}


class BatchDriver:
    """Steps one run's batches against one :class:`~rtune.oracle.batch_api.BatchApi`."""

    def __init__(self, run: RoundsRun, api: BatchApi, summary: BatchSummary):
        self.run = run
        self.api = api
        self.ledger = run.ledger
        self.options = run.options
        self.summary = summary
        self.folder = run.run_dir / "batches"
        self.gone = 0  # batches found unknown to the API
        self.run_uid = run.store.get_meta("run_uid")
        if self.run_uid is None:
            self.run_uid = uuid.uuid4().hex
            run.store.set_meta("run_uid", self.run_uid)

    def step(self) -> None:
        for b in self.ledger.batches("api", ("preparing", "uploaded")):
            self._submit(b)
        settled = len(self.summary.collected) + self.gone
        for b in self.ledger.batches("api", ("submitted",)):
            self._poll(b)
        for b in self.ledger.batches("api", ("finished",)):
            self._collect(b)
        # a round passes over the whole input: only when results came in since the last one
        if not self.summary.rounds or len(self.summary.collected) + self.gone > settled:
            self.summary.rounds.append(self.run.collect(online=self.options.fallback_online))
        self._submit_pending()
        s = self.summary
        s.active = len(self.ledger.batches("api", ("preparing", "uploaded", "submitted",
                                                   "finished")))
        s.pending = self.ledger.count("pending")
        s.failed = self.ledger.count("failed")

    # ------------------------------------------------------------ submit
    def _submit_pending(self) -> None:
        while self.ledger.count("pending"):
            if not self._submit(self.ledger.batch(self._intent())):
                return  # the API is unavailable: the rest waits for the next run

    def _intent(self) -> str:
        """Assign the next pending requests (within the API's limits) to a new batch."""
        opts, ledger = self.options, self.ledger
        batch_id = uuid.uuid4().hex[:16]
        keys: list[str] = []
        size = tokens_in = tokens_out = 0
        for key, _, line_size, tin, max_tokens in ledger.bodies(state="pending"):
            if len(keys) >= opts.max_lines or (keys and size + line_size > opts.max_bytes):
                break
            keys.append(key)
            size += line_size
            tokens_in += tin
            tokens_out += min(max_tokens, tin)
        expected = self.run.prices.cost(self.run.config.model_name, tokens_in, tokens_out,
                                        batch=True)
        with ledger.transaction():
            ledger.new_batch(batch_id, "api", lines=len(keys), expected_cost=expected,
                             path=str(self.folder / f"{batch_id}.jsonl"))
            ledger.assign(keys, batch_id)
        return batch_id

    def _submit(self, b: dict[str, Any]) -> bool:
        """Upload a batch's file and create it, adopting what a cut-off run already made;
        False when the API could not be reached (the next run goes on from here)."""
        batch_id, since = b["id"], b["created"]
        try:
            file_id = b["input_file_id"]
            if file_id is None:
                file_id = self.api.find_file(_file_name(batch_id), since)
                if file_id is None:
                    path = self._write_input(batch_id)
                    file_id = self.api.upload(path, _file_name(batch_id))
                self.ledger.update_batch(batch_id, input_file_id=file_id, state="uploaded")
            info = self.api.find_batch(META_KEY, batch_id, since)
            if info is None:
                info = self.api.create(file_id, {META_KEY: batch_id, "rtune_run": self.run_uid})
                self.summary.submitted.append(info.id)
            self.ledger.update_batch(batch_id, api_id=info.id, api_status=info.status,
                                     counts=info.counts, state="submitted")
        except Unavailable as e:
            self.summary.notes.append(f"batch {batch_id}: not submitted yet ({e}); the next "
                                      "run submits it")
            return False
        Path(b["path"]).unlink(missing_ok=True)  # the API holds the file now
        return True

    def _write_input(self, batch_id: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{batch_id}.jsonl"
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as f:
            for key, body, *_ in self.ledger.bodies(batch=batch_id):
                f.write(request_line(key, body))
        part.replace(path)
        return path

    # ------------------------------------------------------------ poll and collect
    def _poll(self, b: dict[str, Any]) -> None:
        try:
            info = self.api.retrieve(b["api_id"])
        except Unavailable as e:
            self.summary.notes.append(f"batch {b['api_id']}: could not be polled ({e}); "
                                      "polled again next time")
            return
        except Gone:
            self.summary.notes.append(
                f"batch {b['api_id']}: the API no longer knows it; its {b['lines']} "
                "request(s) go out again")
            self.ledger.update_batch(b["id"], state="gone", reason="unknown to the API")
            self.gone += 1
            self._settle(b["id"], "batch_lost", f"batch {b['api_id']} unknown to the API")
            return
        state = "finished" if info.finished else "submitted"
        self.ledger.update_batch(b["id"], api_status=info.status, counts=info.counts,
                                 output_file_id=info.output_file_id,
                                 error_file_id=info.error_file_id, state=state,
                                 reason="; ".join(info.errors)[:500] or None)

    def _collect(self, b: dict[str, Any]) -> None:
        importer = Importer(self.ledger, self.run.prices, model=self.run.config.model_name,
                            retries=self.options.retries,
                            resubmit=not self.options.fallback_online)
        try:
            for kind, file_id in (("output", b["output_file_id"]),
                                  ("errors", b["error_file_id"])):
                if file_id:
                    dest = self.folder / f"{b['id']}.{kind}.jsonl"
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self.api.download(file_id, dest)
                    self.summary.imports.append(importer.import_file(dest))
        except Unavailable as e:
            self.summary.notes.append(f"batch {b['api_id']}: results not downloaded yet "
                                      f"({e}); the next run downloads them")
            return
        except Gone as e:
            self.summary.notes.append(f"batch {b['api_id']}: {e}; its unanswered requests "
                                      "go out again")
        reason, detail = _REASON.get(b["api_status"], ("batch_error", b["api_status"]))
        if b["api_status"] == "failed" and b["reason"]:
            detail = f"the batch failed: {b['reason']}"
        self._settle(b["id"], reason, detail)
        self.ledger.update_batch(b["id"], state="collected",
                                 cost=self.ledger.batch_cost(b["id"]))
        self.summary.collected.append(b["api_id"])

    def _settle(self, batch_id: str, reason: str, detail: str) -> None:
        """Requests of a batch that got no result line: out again (bounded) or failed."""
        with self.ledger.transaction():
            for key, _ in self.ledger.unanswered(batch_id):
                self.ledger.fail(key, reason, detail, retry=not self.options.fallback_online,
                                 retries=self.options.retries)


def _file_name(batch_id: str) -> str:
    return f"rtune-{batch_id}.jsonl"


def recycle_batch(input_path: str | Path, run_dir: str | Path, config: RecycleConfig,
                  options: BatchOptions | None = None, *, output: str | Path | None = None,
                  output_format: str = "jsonl", force_new: bool = False,
                  api: BatchApi | None = None) -> BatchSummary:
    """Recycle ``input_path`` into ``run_dir`` through the Batch API at ``config.spec``:
    one step, or steps until done with ``options.wait``. Writes every candidate so far to
    ``output``."""
    options = options or BatchOptions()
    api = api or BatchApi(config.spec, api_key_env=config.api_key_env, timeout=config.timeout)
    online = None
    if options.fallback_online:
        def online():  # a fresh client per round: each round runs its own event loop
            return config.backend()
    summary = BatchSummary(run_dir=str(run_dir))
    with RoundsRun(input_path, run_dir, config, options, online=online,
                   force_new=force_new) as run:
        driver = BatchDriver(run, api, summary)
        driver.step()
        while options.wait and not summary.done:
            time.sleep(options.poll_interval)
            driver.step()
        summary.output = run.write_output(output, output_format)
        summary.totals = run.totals()
    return summary
