"""The one record type that flows through every stage, with its provenance."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KINDS = ("orig", "compress", "ins", "res", "both", "reflection")


@dataclass
class Record:
    """One instruction/response pair (or a multi-turn conversation passed through).

    ``source_index`` is the record's 0-based position in the input file and, together with
    ``kind``, identifies a candidate everywhere (store, exports, scores, report).
    """

    instruction: str
    output: str
    input: str = ""
    system: str | None = None
    messages: list[dict[str, str]] | None = None  # set only for multi-turn conversations
    source_index: int = 0
    source_id: str | None = None
    kind: str = "orig"
    # provenance of a candidate made by the oracle
    oracle_model: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    raw: str | None = None
    parse_status: str | None = None  # ok | fallback | failed | skipped
    fallback_reason: str | None = None
    # scores, decisions and anything else a stage adds
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_multi_turn(self) -> bool:
        return self.messages is not None

    @property
    def prompt_text(self) -> str:
        """Instruction and input as one user turn (the Alpaca convention)."""
        if self.input.strip():
            return f"{self.instruction}\n\n{self.input}"
        return self.instruction

    def to_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": self.prompt_text})
        msgs.append({"role": "assistant", "content": self.output})
        return msgs

    def derive(self, kind: str, **changes: Any) -> Record:
        """A candidate made from this record: same source, new kind, fresh provenance."""
        base = dataclasses.replace(
            self, kind=kind, oracle_model=None, prompt_id=None, prompt_version=None, raw=None,
            parse_status=None, fallback_reason=None, extra={},
        )
        return dataclasses.replace(base, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        rest = {k: v for k, v in d.items() if k not in names}
        rec = cls(**known)
        if rest:
            rec.extra = {**rest, **rec.extra}
        return rec

    def to_alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}
