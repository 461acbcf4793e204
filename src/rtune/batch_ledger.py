"""The batch ledger: the run store's record of oracle requests that wait for a batch result,
and of the batches (exported rounds, OpenAI batches) they went out in.

A request is keyed by its request key, the same key the store's call cache uses, which is
the ``custom_id`` of its batch line, so a result finds its call and a key the run never made
is recognised. States: ``pending`` (made, not sent), ``out`` (in a written round or a
submitted batch), ``done`` (its reply is in ``calls``), ``failed`` (an error line no
resubmission will fix, or resubmissions used up). A reply is stored in ``calls`` first and its
request marked ``done`` afterwards in one pass (:meth:`Ledger.settle_done`): a random-key
update per reply would cost more than the insert. Until that pass a request with a call
counts as answered everywhere (the engine reads ``calls`` first), and opening a run makes the
pass, so a crash between the two loses nothing.

A request's body (~1 KB) lives in ``batch_bodies``, apart from its ledger row (runs made
before keep it in the row's ``body``): rows without it are small, so looking up a result's
key and marking a file's requests done touch a tenth of the pages. A reply that came in a
batch keeps its body there, as its call's request: the call row leaves ``request`` empty
rather than write the same text twice (a request answered online has it in ``calls``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from .store import RunStore
from .text import repair_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_requests(
    key TEXT PRIMARY KEY, stage TEXT, round INTEGER NOT NULL, state TEXT NOT NULL,
    batch TEXT, attempts INTEGER NOT NULL DEFAULT 0, reason TEXT, detail TEXT, body TEXT,
    size INTEGER NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0,
    max_tokens INTEGER NOT NULL DEFAULT 0, via TEXT, error_lines TEXT);
CREATE INDEX IF NOT EXISTS batch_requests_state ON batch_requests(state, batch);
CREATE TABLE IF NOT EXISTS batches(
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, api_id TEXT,
    input_file_id TEXT, output_file_id TEXT, error_file_id TEXT, api_status TEXT,
    lines INTEGER NOT NULL DEFAULT 0, counts TEXT, expected_cost REAL NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0, reason TEXT, path TEXT, created REAL NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batch_bodies(key TEXT PRIMARY KEY, body TEXT NOT NULL);
"""
_BATCH_FIELDS = {"state", "api_id", "input_file_id", "output_file_id", "error_file_id",
                 "api_status", "counts", "cost", "reason", "path", "lines", "expected_cost"}
# the stage comes from the ledger row (the body stays in the ledger); a key the run never
# made inserts nothing, nor one already done (a second import: cheaper than a conflict)
_CALL_SQL = ("INSERT OR IGNORE INTO calls(key, model, stage, request, response, finish_reason, "
             "tokens_in, tokens_out, cost, latency, created) SELECT key, ?, stage, '', ?, ?, "
             "?, ?, ?, NULL, ? FROM batch_requests WHERE key = ? AND state != 'done'")


@dataclass(slots=True)
class Request:
    key: str
    stage: str | None
    state: str
    attempts: int
    reason: str | None
    detail: str | None
    batch: str | None


class Ledger:
    """The batch tables of a run store. ``writable``: create them when missing."""

    def __init__(self, store: RunStore, *, writable: bool = True):
        self.store = store
        self.db = store.db
        self._stamp = 0.0
        if writable:
            self.db.executescript(SCHEMA)
        self.present = writable or self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'batch_requests'").fetchone() is not None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ requests
    def next_round(self) -> int:
        return (self.db.execute("SELECT MAX(round) FROM batch_requests").fetchone()[0] or 0) + 1

    def get(self, key: str) -> Request | None:
        row = self.db.execute("SELECT key, stage, state, attempts, reason, detail, batch "
                              "FROM batch_requests WHERE key = ?", (key,)).fetchone()
        return Request(*row) if row else None

    def add(self, key: str, stage: str | None, body_json: str, round_: int, *,
            tokens_in: int, max_tokens: int) -> None:
        body = repair_text(body_json)[0]
        if self.db.execute(
                "INSERT OR IGNORE INTO batch_requests(key, stage, round, state, size, "
                "tokens_in, max_tokens) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                (key, stage, round_, len(body.encode()) + 100, tokens_in, max_tokens)).rowcount:
            self.db.execute("INSERT OR REPLACE INTO batch_bodies VALUES (?, ?)", (key, body))

    def bodies(self, *, state: str | None = None,
               batch: str | None = None) -> Iterator[tuple[str, str, int, int, int]]:
        """(key, body, size, tokens_in, max_tokens) of the requests in ``state`` or
        ``batch``, oldest first; read in pages so the caller may write meanwhile."""
        where, arg = ("state = ?", state) if state else ("batch = ? AND state = 'out'", batch)
        last = ""
        while True:
            rows = self.db.execute(
                f"SELECT r.key, COALESCE(r.body, b.body), size, tokens_in, max_tokens "
                f"FROM batch_requests r LEFT JOIN batch_bodies b ON b.key = r.key "
                f"WHERE {where} AND r.key > ? ORDER BY r.key LIMIT 2000", (arg, last)).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def assign(self, keys: Iterable[str], batch: str) -> None:
        self.db.executemany("UPDATE batch_requests SET state = 'out', batch = ? WHERE key = ?",
                            ((batch, k) for k in keys))

    def release(self, batch: str) -> int:
        """Put a batch's unanswered requests back to pending (it never reached the API)."""
        return self.db.execute("UPDATE batch_requests SET state = 'pending', batch = NULL "
                               "WHERE batch = ? AND state = 'out'", (batch,)).rowcount

    def reexport(self) -> int:
        return self.db.execute("UPDATE batch_requests SET state = 'pending' "
                               "WHERE state = 'out'").rowcount

    def known(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` that are requests of this run."""
        out: set[str] = set()
        for i in range(0, len(keys), 900):
            part = keys[i:i + 900]
            out.update(k for (k,) in self.db.execute(
                f"SELECT key FROM batch_requests WHERE key IN ({','.join('?' * len(part))})",
                part).fetchall())
        return out

    def store_replies(self, rows: list[tuple[str, str, str, str | None, int, int, float]]
                      ) -> int:
        """Each (key, model, text, finish_reason, tokens_in, tokens_out, cost) as the finished
        call of its request, unless it has one; returns how many were stored. Call inside
        :meth:`transaction`, then :meth:`settle_done`."""
        now = self._stamp = time.time()
        before = self.db.total_changes
        # in key order, the index lookups and inserts walk each B-tree page once (~12% faster);
        # sorted by key alone, the first of a key's replies in the file is the one kept
        self.db.executemany(_CALL_SQL, (
            (model, text, finish, tin, tout, cost, now, key)
            for key, model, text, finish, tin, tout, cost in sorted(rows, key=itemgetter(0))))
        return self.db.total_changes - before

    def stored_cost(self, keys: list[str]) -> float:
        """The cost of those of ``keys`` that the last :meth:`store_replies` stored."""
        total = 0.0
        for i in range(0, len(keys), 900):
            part = keys[i:i + 900]
            total += self.db.execute(
                f"SELECT COALESCE(SUM(cost), 0) FROM calls WHERE created = ? AND key IN "
                f"({','.join('?' * len(part))})", (self._stamp, *part)).fetchone()[0]
        return total

    def settle_done(self) -> int:
        """Mark every request that has its call as done (one pass); returns how many."""
        return self.db.execute(
            "UPDATE batch_requests SET state = 'done', via = COALESCE(via, 'batch') "
            "WHERE state IN ('pending', 'out', 'failed') AND key IN (SELECT key FROM calls)"
        ).rowcount

    def fail(self, key: str, reason: str, detail: str, *, retry: bool, retries: int,
             line_id: str | None = None) -> str | None:
        """An unanswered request: back to pending while ``retry`` and resubmissions are left,
        else failed; the failure is recorded for ``rtune status``. ``line_id`` names the
        error line: the same line applied twice (a second import) changes nothing. Returns
        the new state; None when nothing changed (answered, unknown, or seen before)."""
        row = self.db.execute(
            "SELECT attempts, state, error_lines, stage, EXISTS(SELECT 1 FROM calls c WHERE "
            "c.key = r.key) FROM batch_requests r WHERE key = ?", (key,)).fetchone()
        seen = (row[2] or "").split() if row else []
        if row is None or row[1] == "done" or row[4] or line_id in seen:
            return None
        attempts, stage = row[0] + 1, row[3]
        if line_id is not None:  # every error line applied to this request, by its id
            seen.append(line_id)
        state = "pending" if retry and attempts <= retries else "failed"
        self.db.execute("UPDATE batch_requests SET state = ?, attempts = ?, reason = ?, "
                        "detail = ?, error_lines = ?, "
                        "batch = CASE WHEN ? = 'pending' THEN NULL ELSE batch END "
                        "WHERE key = ?", (state, attempts, reason, detail, " ".join(seen) or None,
                                          state, key))
        self.store.add_failure(key, stage, reason, detail)
        return state

    def online_done(self, key: str) -> None:
        self.db.execute("UPDATE batch_requests SET state = 'done', body = NULL, via = 'online' "
                        "WHERE key = ?", (key,))
        self.db.execute("DELETE FROM batch_bodies WHERE key = ?", (key,))

    def unanswered(self, batch: str) -> list[tuple[str, str | None]]:
        return self.db.execute("SELECT key, stage FROM batch_requests WHERE batch = ? AND "
                               "state = 'out'", (batch,)).fetchall()

    def count(self, state: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM batch_requests WHERE state = ?",
                               (state,)).fetchone()[0]

    # ------------------------------------------------------------ batches
    def new_batch(self, batch_id: str, kind: str, *, lines: int, expected_cost: float,
                  path: str | None = None, state: str = "preparing") -> None:
        now = time.time()
        self.db.execute("INSERT INTO batches(id, kind, state, lines, expected_cost, path, "
                        "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (batch_id, kind, state, lines, expected_cost, path, now, now))

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        unknown = set(fields) - _BATCH_FIELDS
        if unknown:
            raise ValueError(f"unknown batch fields {unknown}")
        if "counts" in fields and not isinstance(fields["counts"], str | None):
            fields["counts"] = json.dumps(fields["counts"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE batches SET {sets}, updated = ? WHERE id = ?",
                        (*fields.values(), time.time(), batch_id))

    def batches(self, kind: str | None = None, states: tuple[str, ...] = ()
                ) -> list[dict[str, Any]]:
        if not self.present:
            return []
        sql, args = "SELECT * FROM batches WHERE 1", []
        if kind:
            sql, args = sql + " AND kind = ?", [kind]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        cur = self.db.execute(sql + " ORDER BY created, id", args)
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r)) for r in cur]
        for r in rows:
            r["counts"] = json.loads(r["counts"]) if r["counts"] else None
        return rows

    def batch(self, batch_id: str) -> dict[str, Any]:
        return next(b for b in self.batches() if b["id"] == batch_id)

    def batch_cost(self, batch: str) -> float:
        return self.db.execute(
            "SELECT COALESCE(SUM(c.cost), 0) FROM batch_requests r JOIN calls c ON c.key = r.key "
            "WHERE r.batch = ? AND r.via = 'batch'", (batch,)).fetchone()[0]

    def summary(self) -> dict[str, Any]:
        """Requests by state and round, reasons of those not answered, answers by route."""
        if not self.present:
            return {}
        q = self.db.execute
        states = dict(q("SELECT state, COUNT(*) FROM batch_requests GROUP BY state").fetchall())
        rounds: dict[str, dict[str, int]] = {}
        for rnd, stage, n in q("SELECT round, stage, COUNT(*) FROM batch_requests "
                               "GROUP BY round, stage ORDER BY round, stage"):
            rounds.setdefault(str(rnd), {})[stage or "?"] = n
        reasons: dict[str, dict[str, int]] = {}
        for state, reason, n in q("SELECT state, reason, COUNT(*) FROM batch_requests WHERE "
                                  "reason IS NOT NULL GROUP BY state, reason"):
            label = {"pending": "resubmitting", "out": "resubmitted", "done": "repaired",
                     "failed": "failed"}.get(state, state)
            reasons.setdefault(label, {})[reason] = n
        via = dict(q("SELECT via, COUNT(*) FROM batch_requests WHERE via IS NOT NULL "
                     "GROUP BY via").fetchall())
        return {"requests": states, "rounds": rounds, "reasons": reasons, "answered_by": via}
