"""Options shared by the commands that call a model (the endpoint options: endpoint_config)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_guided_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guided", default=None, choices=("auto", "regex", "json", "grammar", "off"),
                   help="guided output: every reply in its declared shape, by construction. "
                   "Local models: constrained decoding (llguidance). Endpoints: the shape as a "
                   "regex (vLLM/SGLang), a GBNF grammar (llama.cpp server) or a JSON schema "
                   "(OpenAI structured outputs); auto tries them in turn and goes on unguided "
                   "where the server refuses them (found once, recorded). Recycling's batch "
                   "modes (no server to probe): auto is the JSON schema, regex and grammar "
                   "vLLM's fields. Default: auto for local models, off for endpoints and the "
                   "batch modes")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
