"""Redaction of secrets from text that servers send back (error messages, echoed headers).

Every server error text passes through :func:`redact` where it enters rtune, before it is
printed, logged or stored. Removed: the API key in use, and anything shaped like a credential
whatever key it belongs to: ``Bearer <token>``, ``Authorization: <value>``, ``api_key=<value>``
and OpenAI/Anthropic-style ``sk-...`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

# A fixed prefix, then one run of token characters (8 or more: "bearer token" in prose stays):
# linear time, no nested quantifiers.
_SHAPES = re.compile(
    r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?"
    r"|\bbearer\s+"
    r"|\b(?:x-)?api[_-]?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{8,}")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the given secrets and without credential-shaped strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _SHAPES.sub(_replace, text)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group(1)
    return f"{prefix}{REDACTED}" if prefix else REDACTED
