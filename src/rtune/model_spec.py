"""How a model is named on the command line and in recipes, parsed once.

``local`` (the embedded SmolLM2-135M-Instruct), ``local:/path`` (a Hugging Face folder or a
.gguf file), ``llamacpp`` or ``llamacpp:/path.gguf`` (llama.cpp), a plain path or a Hub id
already in the local Hugging Face cache, or the ``http(s)://`` base URL of an
OpenAI-compatible server (then ``served`` is the model name on that server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# The embedded model's name in recycle / reflect requests: part of every stored request key
# and run fingerprint of those commands, so it stays as first written.
EMBEDDED_REQUEST_NAME = "smollm2-135m-instruct"
KINDS = ("endpoint", "embedded", "local", "llamacpp")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@dataclass(frozen=True)
class ModelSpec:
    """One model. ``kind``: endpoint (a URL), embedded (the model shipped with rtune, run by
    transformers), local (a folder, a .gguf file or a Hub id), llamacpp (a .gguf through
    llama.cpp; ``path`` None: the embedded one)."""

    text: str
    kind: str
    path: Path | None = None
    url: str | None = None
    served: str | None = None

    @classmethod
    def parse(cls, text: str, served: str | None = None) -> ModelSpec:
        spec = text.strip()
        if is_url(spec):
            return cls(text, "endpoint", url=spec, served=served)
        if spec == "llamacpp" or spec.startswith("llamacpp:"):
            rest = spec.partition(":")[2].strip()
            return cls(text, "llamacpp", Path(rest).expanduser() if rest else None,
                       served=served)
        if spec.startswith("local:"):
            spec = spec[len("local:"):].strip()
        elif spec == "local":
            spec = ""
        if not spec:
            return cls(text, "embedded", served=served)
        return cls(text, "local", Path(spec).expanduser(), served=served)

    @property
    def is_endpoint(self) -> bool:
        return self.kind == "endpoint"

    @property
    def is_embedded(self) -> bool:
        """The model shipped with rtune (through transformers or llama.cpp)."""
        return self.path is None and not self.is_endpoint

    @property
    def is_hub_id(self) -> bool:
        """``org/name`` that is no path here: looked up in the local Hugging Face cache."""
        return (self.kind == "local" and self.path is not None and not self.path.exists()
                and bool(_HUB_ID.fullmatch(self.text.strip())))

    @property
    def display_name(self) -> str:
        """The one human name: the served model, else the embedded model's name, else the
        folder's name or the .gguf file's stem (generator names, judge and student names)."""
        if self.served or self.is_endpoint:
            return self.served or self.text
        if self.path is None:
            return EMBEDDED_NAME
        return self.path.stem if self.path.suffix.lower() == ".gguf" else self.path.name

    @property
    def request_name(self) -> str:
        """The model name recycle and reflect put in requests, provenance and run
        fingerprints: the served model, else the spec as written (the embedded one has its
        own). Unlike :attr:`display_name` it tells two folders of the same name apart, and
        existing runs' stored requests are keyed by it."""
        if self.served:
            return self.served
        return EMBEDDED_REQUEST_NAME if self.text in ("local", "llamacpp") else self.text

    def label(self) -> str:
        """How a report names the model."""
        if self.is_endpoint:
            return f"{self.served} at {self.url}"
        if self.text in ("local", "llamacpp"):
            return f"{self.text} (the embedded {EMBEDDED_NAME})"
        return self.text
