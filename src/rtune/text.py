"""Text that UTF-8 can encode: the one repair applied to input records and oracle replies.

A Python string can hold surrogate code points (U+D800..U+DFFF), e.g. from a ``\\ud800``
escape in JSON, which decoders accept; UTF-8 cannot encode them, so SQLite, files and HTTP
bodies reject such text. :func:`repair_text` joins a surrogate pair that was split into two
code points and replaces every lone surrogate with U+FFFD, the Unicode replacement character.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
REPAIR_NOTE = "characters UTF-8 cannot encode (lone surrogates) replaced with U+FFFD"


def repair_text(text: str) -> tuple[str, int]:
    """``text`` made encodable, and how many lone surrogates were replaced (0: unchanged)."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        pass
    # UTF-16 holds any surrogate with surrogatepass; decoding it back joins valid pairs and
    # turns each lone one into U+FFFD
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return fixed, fixed.count(REPLACEMENT) - text.count(REPLACEMENT)


def repair_value(value: Any) -> tuple[Any, int]:
    """A parsed JSON value with every string (keys too) repaired; the count replaced."""
    if isinstance(value, str):
        return repair_text(value)
    if isinstance(value, list):
        pairs = [repair_value(v) for v in value]
        n = sum(c for _, c in pairs)
        return ([v for v, _ in pairs] if n else value), n
    if isinstance(value, dict):
        total, out = 0, {}
        for k, v in value.items():
            key, nk = repair_text(k) if isinstance(k, str) else (k, 0)
            val, nv = repair_value(v)
            out[key] = val
            total += nk + nv
        return (out if total else value), total
    return value, 0


def repair_fields(item: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A raw record with every string repaired, and the names of the fields that changed."""
    out: dict[str, Any] = {}
    changed: list[str] = []
    for key, value in item.items():
        fixed_key, nk = repair_text(key) if isinstance(key, str) else (key, 0)
        fixed, n = repair_value(value)
        out[fixed_key] = fixed
        if n or nk:
            changed.append(str(fixed_key))
    return out, changed
