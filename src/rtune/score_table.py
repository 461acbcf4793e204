"""The run store's ``scores`` table: one typed row per scored candidate, keyed by its
``(source_index, kind)``.

Losses, perplexities and their ratios are REAL, ``truncated`` and ``max_length`` INTEGER,
the reason and the provenance TEXT; a score that is undefined is NULL. ``score_settings`` is
the fingerprint of the settings that made the row (:meth:`ScoreConfig.fingerprint`); rows
moved from the generic ``items`` table of an older store have none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .score_config import SCORE_FIELDS

Key = tuple[int, str]  # (source_index, kind)

COLUMNS: dict[str, str] = {
    "idx": "INTEGER NOT NULL", "kind": "TEXT NOT NULL",
    **dict.fromkeys(SCORE_FIELDS, "REAL"),
    "truncated": "INTEGER", "reason": "TEXT",
    "student": "TEXT", "template": "TEXT", "max_length": "INTEGER", "score_settings": "TEXT",
}
FIELDS = tuple(COLUMNS)[2:]  # a score row's fields, as stored and as written into files
PROVENANCE = ("score_settings", "student", "template", "max_length")

TABLE = ("CREATE TABLE IF NOT EXISTS scores("
         + ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
         + ", PRIMARY KEY(idx, kind))")
INSERT = (f"INSERT OR REPLACE INTO scores({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(COLUMNS))})")
SELECT = f"SELECT {', '.join(COLUMNS)} FROM scores"
# schema 1 kept score rows as JSON in items(ns 'scores', key 'idx:kind')
FROM_ITEMS = (
    f"INSERT OR REPLACE INTO scores({', '.join(COLUMNS)}) "
    "SELECT CAST(substr(key, 1, instr(key, ':') - 1) AS INTEGER), "
    "substr(key, instr(key, ':') + 1), "
    + ", ".join(f"json_extract(data, '$.{name}')" for name in FIELDS)
    + " FROM items WHERE ns = 'scores'")
ITEMS_NAMESPACE = "scores"


def to_params(key: Key, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The INSERT parameters of one score row (absent fields: NULL)."""
    return (*key, *(row.get(name) for name in FIELDS))


def from_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Key, dict[str, Any]]]:
    """``((idx, kind), fields)`` of SELECTed rows; ``truncated`` back to a bool."""
    for values in rows:
        row = dict(zip(FIELDS, values[2:]))
        if row["truncated"] is not None:
            row["truncated"] = bool(row["truncated"])
        yield (values[0], values[1]), row
