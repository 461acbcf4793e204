"""The run store: one SQLite file (WAL) per run directory that every stage reads and writes.

Each finished oracle call is committed before it counts as done, so a crash or ``kill -9``
loses at most the calls in flight, and a rerun never pays twice for a finished call.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
from .records import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invalid(
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT, line INTEGER, record INTEGER,
    field TEXT, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls(
    key TEXT PRIMARY KEY, model TEXT NOT NULL, stage TEXT, request TEXT NOT NULL,
    response TEXT NOT NULL, finish_reason TEXT, tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    latency REAL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failures(
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, stage TEXT, reason TEXT NOT NULL,
    detail TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS candidates(
    idx INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    data TEXT NOT NULL, PRIMARY KEY(idx, kind));
CREATE TABLE IF NOT EXISTS items(
    ns TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY(ns, key));
"""

STORE_NAME = "rtune.sqlite"


class RunStore:
    """A run directory's SQLite store. Use as a context manager or call :meth:`close`."""

    def __init__(self, run_dir: str | Path, *, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if not create and not self.path.exists():
            raise InputError(str(self.run_dir), f"not an rtune run directory (no {STORE_NAME})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ------------------------------------------------------------ invalid input
    def add_invalid(self, err: InputError) -> None:
        d = err.as_dict()
        self.db.execute(
            "INSERT INTO invalid(path, line, record, field, message) VALUES (?, ?, ?, ?, ?)",
            (d["path"], d["line"], d["record"], d["field"], d["message"]))

    def invalid(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT path, line, record, field, message FROM invalid ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    # ------------------------------------------------------------ oracle calls
    def get_call(self, key: str) -> dict[str, Any] | None:
        cur = self.db.execute(
            "SELECT response, finish_reason, tokens_in, tokens_out, model FROM calls "
            "WHERE key = ?", (key,))
        row = cur.fetchone()
        if row is None:
            return None
        return {"text": row[0], "finish_reason": row[1], "tokens_in": row[2],
                "tokens_out": row[3], "model": row[4]}

    def put_call(self, key: str, *, model: str, stage: str | None, request: dict, response: str,
                 finish_reason: str | None, tokens_in: int, tokens_out: int, cost: float,
                 latency: float | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, stage, json.dumps(request, ensure_ascii=False), response, finish_reason,
             tokens_in, tokens_out, cost, latency, time.time()))

    def add_failure(self, key: str | None, stage: str | None, reason: str,
                    detail: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO failures(key, stage, reason, detail, created) VALUES (?, ?, ?, ?, ?)",
            (key, stage, reason, detail, time.time()))

    def call_totals(self) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), "
            "COALESCE(SUM(cost),0) FROM calls").fetchone()
        return {"calls": row[0], "tokens_in": row[1], "tokens_out": row[2], "cost": row[3]}

    def failure_counts(self) -> dict[str, int]:
        cur = self.db.execute("SELECT reason, COUNT(*) FROM failures GROUP BY reason")
        return dict(cur.fetchall())

    # ------------------------------------------------------------ candidates
    def put_candidate(self, rec: Record) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?)",
            (rec.source_index, rec.kind, rec.parse_status or "ok", rec.fallback_reason,
             json.dumps(rec.to_dict(), ensure_ascii=False)))

    def get_candidate(self, idx: int, kind: str) -> Record | None:
        row = self.db.execute("SELECT data FROM candidates WHERE idx = ? AND kind = ?",
                              (idx, kind)).fetchone()
        return Record.from_dict(json.loads(row[0])) if row else None

    def done_indices(self, kind: str) -> set[int]:
        cur = self.db.execute("SELECT idx FROM candidates WHERE kind = ?", (kind,))
        return {r[0] for r in cur}

    def candidates(self, kind: str | None = None) -> Iterator[Record]:
        if kind is None:
            cur = self.db.execute("SELECT data FROM candidates ORDER BY idx, kind")
        else:
            cur = self.db.execute("SELECT data FROM candidates WHERE kind = ? ORDER BY idx",
                                  (kind,))
        for (data,) in cur:
            yield Record.from_dict(json.loads(data))

    def candidate_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for kind, status, n in self.db.execute(
                "SELECT kind, status, COUNT(*) FROM candidates GROUP BY kind, status"):
            out.setdefault(kind, {})[status] = n
        return out

    def fallback_reasons(self) -> dict[str, int]:
        cur = self.db.execute(
            "SELECT kind || ': ' || reason, COUNT(*) FROM candidates WHERE reason IS NOT NULL "
            "GROUP BY kind, reason ORDER BY COUNT(*) DESC")
        return dict(cur.fetchall())

    # ------------------------------------------------------------ generic items
    def put_item(self, ns: str, key: str, data: Any) -> None:
        """Any stage's keyed results (scores, decisions, generations, judgments)."""
        self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                        (ns, key, json.dumps(data, ensure_ascii=False)))

    def put_items(self, ns: str, pairs: Iterable[tuple[str, Any]]) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                                ((ns, k, json.dumps(v, ensure_ascii=False)) for k, v in pairs))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def get_item(self, ns: str, key: str) -> Any:
        row = self.db.execute("SELECT data FROM items WHERE ns = ? AND key = ?",
                              (ns, key)).fetchone()
        return json.loads(row[0]) if row else None

    def items(self, ns: str) -> Iterator[tuple[str, Any]]:
        for key, data in self.db.execute("SELECT key, data FROM items WHERE ns = ? ORDER BY key",
                                         (ns,)):
            yield key, json.loads(data)

    def item_keys(self, ns: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM items WHERE ns = ?", (ns,))}
