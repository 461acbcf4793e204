"""Recycling in rounds, for oracles answered in bulk: exported batch files and their results.

A round runs the recycler over the input with a :class:`~rtune.oracle.deferred.
DeferringEngine`: a call whose reply is in the run store is answered from it (parsed, re-asked,
fallen back exactly as online), and a call without one becomes a pending request in the
:class:`~rtune.batch_ledger.Ledger`. Round 1 asks the instruction and response stages (and
compress first when it is on); once their results are imported, the next round asks ``both``
and the re-asks of replies that missed a marker. Request lines carry the request key as their
``custom_id``; results are imported by it (:mod:`rtune.batch_import`).

    with RoundsRun("alpaca.json", "runs/alpaca", config) as run:
        run.collect()                       # the pending requests of the next round
        run.export("requests/", shards=16)  # requests/round-1/00000.jsonl ...
        run.import_files(["out/00000.jsonl"]); run.collect()   # candidates, then round 2
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch_import import FileReport, Importer
from .batch_ledger import Ledger
from .errors import InputError
from .fingerprint import run_identity
from .io import write_records
from .oracle.base import Backend, ChatRequest, PermanentError
from .oracle.batch_files import MAX_BYTES, MAX_LINES, ShardWriter, request_line
from .oracle.deferred import DeferringEngine
from .oracle.guided_http import batch_flavor
from .progress import RunProgress
from .recycle import Recycler, _open_run, iter_input, result_settings, validate_input
from .recycle_config import RecycleConfig
from .store import RunStore


@dataclass
class BatchOptions:
    """Settings of the batch and export/import modes (none of them changes a result)."""

    requests_dir: str | None = None  # export: where round folders of request files go
    shards: int = 1  # export: files per round at least (more when a file would pass a limit)
    reexport: bool = False  # export the requests still out again (their results were lost)
    wait: bool = False  # batch: poll until every round is done
    poll_interval: float = 30.0  # batch: seconds between polls with wait
    retries: int = 2  # times a request whose line failed for a passing reason goes again
    fallback_online: bool = False  # run failed and expired lines online instead
    max_lines: int = MAX_LINES  # per file / batch (the OpenAI Batch API's limits)
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        from .errors import ConfigError

        if self.shards < 1:
            raise ConfigError(f"--shards must be at least 1 (got {self.shards})")
        if self.retries < 0:
            raise ConfigError(f"--batch-retries must be 0 or more (got {self.retries})")
        if not self.poll_interval > 0:
            raise ConfigError(f"--poll-interval must be greater than 0 (got {self.poll_interval})")
        if self.max_lines < 1 or self.max_bytes < 1000:
            raise ConfigError("batch file limits must allow at least one line")


@dataclass
class RoundReport:
    round: int
    new: int = 0  # requests this pass added to the ledger
    deferred: int = 0  # calls waiting for a result (new or still out)
    online: int = 0  # calls run online (--fallback-online)
    failures: dict[str, int] = field(default_factory=dict)  # stages left undone, by reason


@dataclass
class ExportReport:
    round: str | None  # the round folder's name; None when nothing was pending
    folder: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, lines)
    lines: int = 0
    still_out: int = 0  # requests of earlier rounds still waiting for their results


class _Counting:
    """The backend of a run that calls nothing itself: token counts as for an endpoint."""

    name = "batch"
    runs_locally = True

    def __init__(self, context_length: int | None):
        self.context_length = context_length

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Any:
        raise RuntimeError("a batch-mode run has no online backend")

    async def aclose(self) -> None:
        pass


def request_body(request: ChatRequest) -> str:
    """The Chat Completions body of a request line, as JSON text: the request's payload,
    which is what the HTTP backend posts and what the request key hashes; a guided request
    carries its shape in the field of :func:`~rtune.oracle.guided_http.batch_flavor`."""
    body = request.payload()
    spec = request.guided
    if spec is not None:  # the field, in place of the spec's description that the key hashes
        del body["guided"]
        body.update(batch_flavor(spec.mode).fields(spec.shape))
    return json.dumps(body, ensure_ascii=False)


class RoundsRun:
    """A run folder opened for the batch modes: input and settings checked as online (same
    identity, one writer at a time), the ledger ready. ``online`` makes the backend for
    calls that go online (``--fallback-online``), one per round (each round runs its own
    event loop); None in export/import."""

    def __init__(self, input_path: str | Path, run_dir: str | Path, config: RecycleConfig,
                 options: BatchOptions | None = None, *,
                 online: Callable[[], Backend] | None = None, force_new: bool = False):
        self.input_path = Path(input_path)
        self.config = config
        self.options = options or BatchOptions()
        invalid: list[InputError] = []
        self.total = validate_input(self.input_path, config, invalid)
        identity = run_identity(self.input_path, result_settings(config))
        self.store: RunStore = _open_run(run_dir, identity, invalid, force_new)
        self.run_dir = Path(run_dir)
        try:
            self.store.set_meta("input_records", self.total)
            self.store.set_meta("recycle_config", config.public())
            if config.guided_mode != "off":  # for rtune status: the field the lines carry
                self.store.set_meta("guided", {"mode": config.guided_mode, batch_flavor(
                    config.guided_mode).name: "sent in every batch line"})
            self.ledger = Ledger(self.store)
            self.ledger.settle_done()  # an import cut off between its two steps
        except BaseException:
            self.store.close()
            raise
        self.online = online
        self.prices = config.prices()

    def __enter__(self) -> RoundsRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------ a round
    def collect(self, *, online: bool = False) -> RoundReport:
        """Run the recycler once over the input; see the module's docstring. ``online``:
        requests the batches could not answer run online now, through ``backend``."""
        report = RoundReport(self.ledger.next_round())
        ledger = self.ledger

        def route(key: str, request: ChatRequest, stage: str | None) -> bool:
            row = ledger.get(key)
            if row is None:
                text = sum(len(m["content"]) for m in request.messages)
                ledger.add(key, stage, request_body(request), report.round,
                           tokens_in=text // 4 + 4 * len(request.messages),
                           max_tokens=request.max_tokens)
                report.new += 1
                return False
            if row.state == "failed":
                if online:
                    report.online += 1
                    return True
                raise PermanentError(row.reason or "batch_error", row.detail or "")
            return False

        progress = RunProgress(self.total, enabled=self.config.progress,
                               label=f"round {report.round}")
        # the same token counts either way (4 characters a token, as for any endpoint), so a
        # request and its key do not depend on whether a backend is there
        backend: Backend = (self.online() if online and self.online
                            else _Counting(self.config.context_length))  # type: ignore
        recycler = Recycler(self.config, self.store, backend, progress)
        engine = DeferringEngine(recycler.engine, route, ledger.online_done)
        recycler.engine = engine

        async def run_all() -> None:
            try:
                with progress:
                    async for _ in engine.map(recycler.process,
                                              iter_input(self.input_path, self.config)):
                        pass
            finally:
                await backend.aclose()

        asyncio.run(run_all())
        report.deferred = engine.deferred
        report.failures = dict(recycler.failures)
        return report

    # ------------------------------------------------------------ export / import
    def export(self, requests_dir: str | Path, *, shards: int | None = None,
               reexport: bool | None = None) -> ExportReport:
        """Write every pending request into ``requests_dir/round-N/`` (N: the next export),
        in ``shards`` files at least, none past the line/byte limits; they are then out."""
        ledger, opts = self.ledger, self.options
        shards = shards or opts.shards
        if reexport if reexport is not None else opts.reexport:
            ledger.reexport()
        pending = ledger.count("pending")
        if not pending:
            return ExportReport(None, still_out=ledger.count("out"))
        name = f"round-{len(ledger.batches('export')) + 1}"
        folder = Path(requests_dir) / name
        writer = ShardWriter(folder, per_file=math.ceil(pending / shards),
                             max_lines=opts.max_lines, max_bytes=opts.max_bytes)
        tokens_in = tokens_out = lines = 0
        try:
            with ledger.transaction():  # a crash leaves every request pending
                ledger.new_batch(name, "export", lines=0, expected_cost=0.0,
                                 path=str(folder), state="out")
                page: list[str] = []
                for key, body, _, tin, max_tokens in ledger.bodies(state="pending"):
                    writer.write(request_line(key, body))
                    page.append(key)
                    tokens_in += tin
                    tokens_out += min(max_tokens, tin)
                    if len(page) >= 2000:
                        ledger.assign(page, name)
                        lines += len(page)
                        page = []
                ledger.assign(page, name)
                lines += len(page)
                files = writer.close()
                expected = self.prices.cost(self.config.model_name, tokens_in, tokens_out,
                                            batch=True)
                ledger.update_batch(name, lines=lines, expected_cost=expected)
        except BaseException:
            writer.abort()
            raise
        _write_manifest(folder, self.config.model_name, self.run_dir, files)
        self.store.set_meta("requests_dir", str(Path(requests_dir).resolve()))
        return ExportReport(name, str(folder), [(str(s.path), s.lines) for s in files], lines,
                            still_out=ledger.count("out") - lines)

    def import_files(self, files: Iterable[str | Path]) -> list[FileReport]:
        """Import result files (see :mod:`rtune.batch_import`); every file is checked to
        exist before any is read."""
        paths = [Path(f) for f in files]
        for p in paths:
            if not p.is_file():
                raise InputError(str(p), "no such result file")
        importer = Importer(self.ledger, self.prices, model=self.config.model_name,
                            retries=self.options.retries,
                            resubmit=not self.options.fallback_online)
        reports = [importer.import_file(p) for p in paths]
        self.settle_exports()
        return reports

    def settle_exports(self) -> None:
        """Mark exported rounds whose every request has its result as done."""
        for b in self.ledger.batches("export", ("out",)):
            if not self.ledger.unanswered(b["id"]):
                self.ledger.update_batch(b["id"], state="done",
                                         cost=self.ledger.batch_cost(b["id"]))

    def write_output(self, output: str | Path | None, fmt: str = "jsonl") -> str | None:
        if output is None:
            return None
        write_records(self.store.candidates(), output, format=fmt)
        return str(output)

    def totals(self) -> dict[str, Any]:
        return {"candidates": self.store.candidate_counts(), "calls": self.store.call_totals(),
                "requests": self.ledger.summary().get("requests", {}),
                "invalid": len(self.store.invalid())}


def _write_manifest(folder: Path, model: str, run_dir: Path,
                    files: list[Any]) -> None:
    """A small note next to the request files: what they are and how to run them."""
    manifest = {"run_dir": str(run_dir.resolve()), "model": model,
                "files": [{"name": s.path.name, "lines": s.lines, "bytes": s.bytes}
                          for s in files],
                "run": "python -m vllm.entrypoints.openai.run_batch -i FILE -o RESULT "
                       f"--model {model}",
                "import": f"rtune recycle INPUT --run-dir {run_dir} --mode import RESULT..."}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")




@dataclass
class RoundsSummary:
    run_dir: str
    round: RoundReport
    export: ExportReport | None = None
    imports: list[FileReport] = field(default_factory=list)
    output: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)


def export_round(input_path: str | Path, run_dir: str | Path, config: RecycleConfig,
                 options: BatchOptions | None = None, *, output: str | Path | None = None,
                 output_format: str = "jsonl", force_new: bool = False) -> RoundsSummary:
    """Run a round and write its pending requests as batch files (``--mode export``) into
    ``options.requests_dir`` (default: the last export's, else ``RUN_DIR/requests``)."""
    with RoundsRun(input_path, run_dir, config, options, force_new=force_new) as run:
        report = run.collect()
        export = run.export(_requests_dir(run))
        return RoundsSummary(str(run_dir), report, export, [],
                             run.write_output(output, output_format), run.totals())


def import_round(input_path: str | Path, run_dir: str | Path, config: RecycleConfig,
                 files: Iterable[str | Path], options: BatchOptions | None = None, *,
                 output: str | Path | None = None,
                 output_format: str = "jsonl") -> RoundsSummary:
    """Import result files (``--mode import``), run a round on them, and write the next
    round's requests where the last export went (or ``options.requests_dir``)."""
    with RoundsRun(input_path, run_dir, config, options) as run:
        imports = run.import_files(files)
        report = run.collect()
        export = run.export(_requests_dir(run))
        return RoundsSummary(str(run_dir), report, export, imports,
                             run.write_output(output, output_format), run.totals())


def _requests_dir(run: RoundsRun) -> Path:
    chosen = run.options.requests_dir or run.store.get_meta("requests_dir")
    return Path(chosen) if chosen else run.run_dir / "requests"
