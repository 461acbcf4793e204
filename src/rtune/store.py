"""The run store: one SQLite file (WAL) per run directory that every stage reads and writes.

Each finished oracle call is committed before it counts as done, so a crash or ``kill -9``
loses at most the calls in flight, and a rerun never pays twice for a finished call.

A store is marked as rtune's in its SQLite header (``application_id``, ``user_version`` = schema
version), written before WAL is switched on, so the file itself carries them from its first
commit. Opening checks that mark from the file's bytes and never writes into a SQLite file that
isn't rtune's; a damaged or foreign store raises :class:`StoreError` (one line: which file, what
is wrong, what to do), in every command and at any query. A store of an older schema is
migrated when it is opened, in one transaction; a newer one is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import score_table
from .errors import InputError, RunInUse, StoreError
from .records import Record
from .text import repair_text

try:
    import fcntl
except ImportError:  # Windows: no flock; the writer lock is not taken there
    fcntl = None  # type: ignore[assignment]

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
SCHEMA += score_table.TABLE + ";\n"

STORE_NAME = "rtune.sqlite"
LOCK_NAME = "rtune.lock"
APPLICATION_ID = 0x7274756E  # "rtun"
SCHEMA_VERSION = 2  # 2: scores in their typed table (1: as JSON in items)
_TABLES = {"meta", "invalid", "calls", "failures", "candidates", "items"}
_MAGIC = b"SQLite format 3\x00"
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
# SQLITE_PERM, BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN: the disk or another process
_ENVIRONMENT = {3, 5, 6, 8, 10, 13, 14}


def _damaged(path: Path, what: str) -> StoreError:
    return StoreError(
        f"{path}: the run store is damaged ({what}); recover what it holds with "
        f"`sqlite3 {path} .recover | sqlite3 recovered.sqlite` and put recovered.sqlite in its "
        "place, or start afresh with another --run-dir")


def _foreign(path: Path, what: str) -> StoreError:
    return StoreError(f"{path}: not an rtune run store ({what}); rtune leaves it untouched: "
                      "use another --run-dir")


def _translate(path: Path, e: sqlite3.DatabaseError) -> Exception:
    """SQLite's damage and environment errors as one-line StoreErrors; others unchanged."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _DAMAGED:
        return _damaged(path, str(e))
    if code in _ENVIRONMENT:
        return StoreError(f"{path}: {e}")
    return e


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise _translate(path, e) from None


class _Cursor(sqlite3.Cursor):
    """Translates errors at every step where SQLite reads the file: executing, fetching."""

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None

    def executemany(self, sql: str, seq: Iterable[Any], /) -> _Cursor:
        try:
            return super().executemany(sql, seq)
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None

    def executescript(self, script: str, /) -> _Cursor:
        try:
            return super().executescript(script)
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None

    def __next__(self) -> Any:  # try, not _guard: a context manager per row costs 4x
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            raise _translate(self.connection.store_path, e) from None


class _Connection(sqlite3.Connection):
    """A connection whose shortcut methods run through :class:`_Cursor`."""

    store_path: Path

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, seq: Iterable[Any], /) -> _Cursor:
        return self.cursor(_Cursor).executemany(sql, seq)

    def executescript(self, script: str, /) -> _Cursor:
        return self.cursor(_Cursor).executescript(script)


def _connect(path: Path) -> _Connection:
    with _guard(path):
        db = sqlite3.connect(path, timeout=30, isolation_level=None, factory=_Connection)
    db.store_path = path
    return db


def inspect_store(path: Path) -> str:
    """What the file at ``path`` is: ``new`` (absent, empty, or a SQLite file with no tables),
    ``rtune`` (marked as rtune's) or ``legacy`` (rtune's tables, made before the mark).

    Reads the 100-byte SQLite header itself; only an unmarked file is opened, read-only, to
    list its tables. Raises :class:`StoreError` for a foreign or damaged file.
    """
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return "new"
    with open(path, "rb") as f:
        head = f.read(100)
    if not head.startswith(_MAGIC[: len(head)]) or len(head) < len(_MAGIC):
        raise _foreign(path, "not a SQLite database")
    if len(head) < 100:
        raise _damaged(path, f"truncated to {size} bytes")
    _check_size(path, head, size)
    app_id = int.from_bytes(head[68:72], "big")
    if app_id == APPLICATION_ID:
        return "rtune"
    if app_id != 0:
        raise _foreign(path, f"SQLite application id {app_id:#x}")
    tables = _tables(path)
    if not tables:
        return "new"
    if _TABLES <= tables:
        return "legacy"
    raise _foreign(path, "a SQLite database with tables " + ", ".join(sorted(tables)[:6]))


def _check_size(path: Path, head: bytes, size: int) -> None:
    """A file shorter than its header's page count says is truncated. The count is valid when
    the change counter (bytes 24-28) equals version-valid-for (92-96); while a write-ahead log
    is pending the header may run ahead of the file, so then SQLite's own recovery decides."""
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages * page_size > size:
        raise _damaged(path, f"truncated: {size:,} of {pages * page_size:,} bytes")


def _tables(path: Path) -> set[str]:
    db = None
    try:
        with _guard(path):
            db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        if db is not None:
            db.close()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def _remove_store(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def _clean(text: str) -> str:
    return repair_text(text)[0]


def _dumps(value: Any) -> str:
    return _clean(json.dumps(value, ensure_ascii=False))


class RunLock:
    """The writer lock of a run folder: an exclusive ``flock`` on ``RUN_DIR/rtune.lock``.

    The kernel drops a flock when the process holding it ends, however it ends (``kill -9``
    too), so a dead writer never leaves the folder locked; the file stays and means nothing
    by itself. (SQLite's locks can't serve: in WAL mode a lock lasts one transaction, and a
    transaction held for a whole run would commit nothing until its end.) Readers take no lock.
    """

    def __init__(self, run_dir: str | Path, command: str):
        self.fd: int | None = None
        run_dir = Path(run_dir)
        if fcntl is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise RunInUse(f"{run_dir} is in use by another process ({holder or 'rtune'}): "
                               "wait for it to finish, or use another --run-dir") from None
            raise StoreError(f"{run_dir / LOCK_NAME}: cannot lock the run folder: {e}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"rtune {command}, pid {os.getpid()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RunStore:
    """A run directory's SQLite store. Use as a context manager or call :meth:`close`.

    ``create``: make the store when the folder has none (else :class:`InputError`).
    ``writer``: the command writing the run; takes the folder's :class:`RunLock` first, so a
    second writer fails at once with :class:`RunInUse`. ``fresh`` (with ``writer``): delete
    the folder's rtune store first and start afresh (a foreign or damaged file is never
    deleted).
    """

    def __init__(self, run_dir: str | Path, *, create: bool = True, writer: str | None = None,
                 fresh: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if not create and not self.path.exists():
            raise InputError(str(self.run_dir), f"not an rtune run directory (no {STORE_NAME})")
        if writer:
            inspect_store(self.path)  # a foreign or damaged file: refused before the lock file
        self._lock = RunLock(self.run_dir, writer) if writer else None
        try:
            self.db = self._open(create, fresh and writer is not None)
        except BaseException:
            if self._lock:
                self._lock.release()
            raise

    def _open(self, create: bool, fresh: bool) -> _Connection:
        kind = inspect_store(self.path)
        if fresh and kind != "new":
            _remove_store(self.path)
            kind = "new"
        if kind == "new" and not create:
            raise InputError(str(self.run_dir), f"not an rtune run directory ({STORE_NAME} "
                             "holds no run)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        db = _connect(self.path)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._prepare(db, kind)
            self._verify(db)
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _verify(self, db: _Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: made by a newer rtune (store schema {version}; this "
                             f"one reads up to {SCHEMA_VERSION}): upgrade rtune")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if not _TABLES <= tables:  # marked, but its maker died before the tables were made
            raise InputError(str(self.run_dir), f"not an rtune run directory ({STORE_NAME} "
                             "holds no run)")

    @staticmethod
    def _prepare(db: _Connection, kind: str) -> None:
        if kind in ("new", "legacy"):  # rollback mode for a new file: the mark is in its header
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if kind == "new":  # a legacy store keeps its version (0: schema 1) until migrated
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    @staticmethod
    def _migrate(db: _Connection) -> None:
        """Bring a store of an older schema up to this one, in one transaction (the version is
        read again inside it: another process may have migrated the store meanwhile)."""
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with RunStore._transaction(db, "BEGIN IMMEDIATE"):
            if db.execute("PRAGMA user_version").fetchone()[0] < 2:
                db.execute(score_table.TABLE)
                db.execute(score_table.FROM_ITEMS)
                db.execute("DELETE FROM items WHERE ns = ?", (score_table.ITEMS_NAMESPACE,))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    @contextmanager
    def _transaction(db: _Connection, begin: str = "BEGIN") -> Iterator[None]:
        db.execute(begin)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        if self._lock:
            self._lock.release()

    # ------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ------------------------------------------------------------ invalid input
    def add_invalid(self, err: InputError) -> None:
        d = err.as_dict()
        self.db.execute(
            "INSERT INTO invalid(path, line, record, field, message) VALUES (?, ?, ?, ?, ?)",
            (d["path"] and _clean(d["path"]), d["line"], d["record"],
             d["field"] and _clean(d["field"]), _clean(d["message"])))

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
            (key, _clean(model), stage, _dumps(request), _clean(response),
             finish_reason and _clean(finish_reason),
             tokens_in, tokens_out, cost, latency, time.time()))

    def revise_call(self, key: str, response: str, ns: str, data: Any) -> None:
        """A stored call's reply replaced by ``response`` and its ``ns`` item set, at once
        (a batch line's guided reply, checked and mapped when first read)."""
        with self._transaction(self.db):
            self.db.execute("UPDATE calls SET response = ? WHERE key = ?",
                            (_clean(response), key))
            self.put_item(ns, key, data)

    def add_failure(self, key: str | None, stage: str | None, reason: str,
                    detail: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO failures(key, stage, reason, detail, created) VALUES (?, ?, ?, ?, ?)",
            (key, stage, reason, detail and _clean(detail), time.time()))

    def call_totals(self) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), "
            "COALESCE(SUM(cost),0) FROM calls").fetchone()
        return {"calls": row[0], "tokens_in": row[1], "tokens_out": row[2], "cost": row[3]}

    def failure_counts(self) -> dict[str, int]:
        cur = self.db.execute("SELECT reason, COUNT(*) FROM failures GROUP BY reason")
        return dict(cur.fetchall())

    def failure_summary(self) -> dict[str, dict[str, int]]:
        """Failed calls by reason, ``standing`` apart from ``repaired``: one per call (its
        latest failure); a call is repaired when it finished after that failure (a later
        run). A failure recorded after its call's reply (an unreadable judgment) stands."""
        cur = self.db.execute(
            "WITH latest AS (SELECT MAX(id) AS id FROM failures WHERE key IS NOT NULL "
            "GROUP BY key UNION ALL SELECT id FROM failures WHERE key IS NULL) "
            "SELECT f.reason, COALESCE(c.created > f.created, 0), COUNT(*) FROM latest "
            "JOIN failures f ON f.id = latest.id LEFT JOIN calls c ON c.key = f.key "
            "GROUP BY 1, 2")
        out: dict[str, dict[str, int]] = {"standing": {}, "repaired": {}}
        for reason, repaired, n in cur:
            out["repaired" if repaired else "standing"][reason] = n
        return out

    # ------------------------------------------------------------ candidates
    def put_candidate(self, rec: Record) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?)",
            (rec.source_index, rec.kind, rec.parse_status or "ok",
             rec.fallback_reason and _clean(rec.fallback_reason),
             _dumps(rec.to_dict())))

    def get_candidate(self, idx: int, kind: str) -> Record | None:
        row = self.db.execute("SELECT data FROM candidates WHERE idx = ? AND kind = ?",
                              (idx, kind)).fetchone()
        return Record.from_dict(json.loads(row[0])) if row else None

    def has_candidates(self) -> bool:
        return self.db.execute("SELECT 1 FROM candidates LIMIT 1").fetchone() is not None

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

    def candidate_counts_by_guided(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Candidates per kind, per guided form of their reply (``extra.guided``; ``off``
        when unguided or made before it was recorded): ``by_status`` (per parse status) and
        ``looped`` (replies with a text the loop guard ended, ``extra.looped``)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for kind, form, status, n, looped in self.db.execute(
                "SELECT kind, COALESCE(json_extract(data, '$.extra.guided'), 'off'), status, "
                "COUNT(*), SUM(COALESCE(json_extract(data, '$.extra.looped'), 0) > 0) "
                "FROM candidates WHERE kind != 'orig' GROUP BY 1, 2, 3"):
            row = out.setdefault(kind, {}).setdefault(form, {"by_status": {}, "looped": 0})
            row["by_status"][status] = n
            row["looped"] += looped
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
                        (ns, key, _dumps(data)))

    def put_items(self, ns: str, pairs: Iterable[tuple[str, Any]]) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                                ((ns, k, _dumps(v)) for k, v in pairs))
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

    # ------------------------------------------------------------ scores
    def put_scores(self, rows: Iterable[tuple[score_table.Key, Mapping[str, Any]]]) -> None:
        """Store ``((source_index, kind), fields)`` score rows in one transaction."""
        with self._transaction(self.db):
            self.db.executemany(score_table.INSERT,
                                (score_table.to_params(k, row) for k, row in rows))

    def scores(self, kind: str | None = None) -> dict[score_table.Key, dict[str, Any]]:
        """Score rows by ``(source_index, kind)``: every kind, or one."""
        where, args = ("", ()) if kind is None else (" WHERE kind = ?", (kind,))
        cur = self.db.execute(score_table.SELECT + where + " ORDER BY idx, kind", args)
        return dict(score_table.from_rows(cur))

    def score_provenance(self) -> list[dict[str, Any]]:
        """The distinct provenance (settings fingerprint, student, template, max_length) of
        the stored score rows."""
        cols = ", ".join(score_table.PROVENANCE)
        cur = self.db.execute(f"SELECT DISTINCT {cols} FROM scores")
        return [dict(zip(score_table.PROVENANCE, row)) for row in cur]

    def delete_scores(self) -> None:
        self.db.execute("DELETE FROM scores")
