"""Errors that name where bad input came from."""

from __future__ import annotations


class RtuneError(Exception):
    """Base class: a user-facing error whose message is printed without a traceback; the
    command exits with ``exit_code`` (2: bad input or usage)."""

    exit_code = 2


class InputError(RtuneError):
    """Bad input: names the file, the line or record number and the field."""

    def __init__(self, path: str, message: str, *, line: int | None = None,
                 record: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.record = record
        self.field = field
        self.reason = message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")

    def as_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "record": self.record,
                "field": self.field, "message": self.reason}


class ConfigError(RtuneError):
    """Bad options or settings, found before any compute or paid call."""


class StoreError(RtuneError):
    """A run store that cannot be used as it is: damaged, not rtune's, newer, or unreachable."""


class RunInUse(RtuneError):
    """Another process is writing to the same run folder."""
