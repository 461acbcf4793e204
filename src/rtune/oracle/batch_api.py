"""The OpenAI Batch API through the openai SDK.

Upload a request file (``files.create(purpose="batch")``), create a batch on it
(``batches.create(endpoint="/v1/chat/completions", completion_window="24h", metadata=...)``),
follow it (``batches.retrieve``: validating -> in_progress -> finalizing -> completed, or
failed / expired / cancelling -> cancelled; ``request_counts``), download its output and error
files (``files.content``, streamed to disk), cancel it. A batch or file whose creation was
cut off before its id was kept is found again by listing (newest first) and matching the
metadata or file name rtune gave it.

Errors: 401/403 stop the run (:class:`~rtune.oracle.base.FatalError`); 404 on a batch or
file is :class:`Gone`; 429, 5xx and lost connections, once the SDK's own retries are spent,
are :class:`Unavailable` (try again at the next poll). Server texts are redacted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from ..errors import ConfigError, RtuneError
from ..redact import redact
from .base import FatalError

TERMINAL = ("completed", "failed", "expired", "cancelled")
LOOKBACK = 3600.0  # seconds before an intent that a listing still searches (clock skew)


class Gone(RtuneError):
    """The API no longer knows a batch or file (HTTP 404)."""


class Unavailable(RtuneError):
    """The API could not be reached or answered with a passing error; try again later."""

    exit_code = 1


@dataclass
class BatchInfo:
    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # why a batch failed (validation)
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class BatchApi:
    """A synchronous client of one OpenAI-compatible base URL's Files and Batches API."""

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 2):
        key = os.environ.get(api_key_env)
        if key is None:
            local = any(h in base_url for h in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0"))
            if not local:
                raise ConfigError(f"set ${api_key_env} (or name another variable with "
                                  "--api-key-env) to use the Batch API")
        self._secrets = (key,) if key else ()
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "none",
                                    timeout=timeout, max_retries=max_retries)

    # ------------------------------------------------------------ files
    def upload(self, path: Path, name: str) -> str:
        with open(path, "rb") as f:
            return self._call(lambda: self.client.files.create(file=(name, f),
                                                                purpose="batch")).id

    def find_file(self, name: str, since: float) -> str | None:
        """The id of the newest batch file named ``name`` uploaded after ``since``."""
        def files() -> Iterator[Any]:
            yield from self.client.files.list(purpose="batch", order="desc")
        for f in self._call(lambda: list(_until(files(), since))):
            if f.filename == name:
                return f.id
        return None

    def download(self, file_id: str, dest: Path) -> int:
        """Stream a file to ``dest`` (written as ``.part``, renamed when whole); its size."""
        part = dest.with_name(dest.name + ".part")
        size = 0

        def fetch() -> None:
            nonlocal size
            with self.client.files.with_streaming_response.content(file_id) as resp, \
                    open(part, "wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
                    size += len(chunk)

        self._call(fetch, what=f"file {file_id}")
        os.replace(part, dest)
        return size

    # ------------------------------------------------------------ batches
    def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchInfo:
        return _info(self._call(lambda: self.client.batches.create(
            input_file_id=input_file_id, endpoint="/v1/chat/completions",
            completion_window="24h", metadata=metadata)))

    def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(self._call(lambda: self.client.batches.retrieve(batch_id),
                                what=f"batch {batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        return _info(self._call(lambda: self.client.batches.cancel(batch_id),
                                what=f"batch {batch_id}"))

    def find_batch(self, key: str, value: str, since: float) -> BatchInfo | None:
        """The batch created after ``since`` whose metadata has ``key`` = ``value``."""
        def batches() -> Iterator[Any]:
            yield from self.client.batches.list(limit=100)
        for b in self._call(lambda: list(_until(batches(), since))):
            if (b.metadata or {}).get(key) == value:
                return _info(b)
        return None

    # ------------------------------------------------------------ errors
    def _call(self, fn: Any, what: str = "") -> Any:
        try:
            return fn()
        except openai.NotFoundError as e:
            raise Gone(f"{self.base_url}: the API no longer knows {what or 'it'} "
                       f"({self._short(e)})") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise FatalError("auth", f"{self.base_url} refused the API key (HTTP "
                             f"{e.status_code}; set ${self.api_key_env} or name another "
                             "variable with --api-key-env)") from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409, 425, 429) or e.status_code >= 500:
                raise Unavailable(f"{self.base_url}: HTTP {e.status_code} "
                                  f"({self._short(e)})") from None
            raise RtuneError(f"{self.base_url}: the Batch API refused the request: HTTP "
                             f"{e.status_code} ({self._short(e)})") from None
        except openai.APIConnectionError as e:
            raise Unavailable(f"{self.base_url}: cannot connect ({self._short(e)})") from None

    def _short(self, e: Exception) -> str:
        return redact(str(e).replace("\n", " "), self._secrets)[:300]


def _until(items: Iterator[Any], since: float) -> Iterator[Any]:
    """Items of a newest-first listing created after ``since`` (less a margin)."""
    for item in items:
        created = getattr(item, "created_at", None)
        if isinstance(created, int | float) and created < since - LOOKBACK:
            return
        yield item


def _info(b: Any) -> BatchInfo:
    counts = b.request_counts.model_dump() if b.request_counts is not None else {}
    errors = [f"{e.code}: {e.message}" if e.code else str(e.message)
              for e in (b.errors.data or [])] if b.errors is not None else []
    return BatchInfo(id=b.id, status=b.status, input_file_id=b.input_file_id,
                     output_file_id=b.output_file_id, error_file_id=b.error_file_id,
                     counts={k: v for k, v in counts.items() if isinstance(v, int)},
                     errors=errors, metadata=dict(b.metadata or {}),
                     created_at=float(b.created_at or 0))
