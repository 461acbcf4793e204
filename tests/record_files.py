"""Small instruction datasets written for a test."""

from __future__ import annotations

import json
from pathlib import Path


def alpaca_jsonl(folder: Path, n: int, name: str = "data.jsonl") -> Path:
    """``n`` Alpaca records (``Task i`` / ``Answer i``, no input) as JSONL in ``folder``."""
    rows = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(n)]
    path = folder / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
