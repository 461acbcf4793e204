"""Options shared by every command that talks to an oracle / judge / generator."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_oracle_arguments(p: argparse.ArgumentParser, *, flag: str = "--oracle",
                         default: str = "local", replicas: bool = False) -> None:
    """``replicas``: the flag may be given several times (servers of one model); the values
    come as a list, None when it is not given."""
    g = p.add_argument_group("model endpoint")
    g.add_argument(flag, default=None if replicas else default, metavar="SPEC",
                   action="append" if replicas else "store",
                   help="'local' (embedded SmolLM2-135M-Instruct, no key, no network), "
                   "'local:/path' (HF folder or .gguf), 'llamacpp', or the base URL of an "
                   "OpenAI-compatible server, e.g. https://api.openai.com/v1 or "
                   "http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp, TGI)" +
                   (f"; give {flag} again for each replica of the same served model (one "
                    "window over all, least-outstanding routing; --concurrency counts all "
                    f"of them; default {default})" if replicas else ""))
    g.add_argument("--model", default=None,
                   help="model name on the server (required for URLs), e.g. gpt-4o-mini")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                   help="environment variable holding the API key (the key is never logged "
                   "or stored)")
    g.add_argument("--concurrency", type=int, default=16,
                   help="requests in flight at once (sliding window)")
    g.add_argument("--rpm", type=float, default=None, help="requests-per-minute limit")
    g.add_argument("--tpm", type=float, default=None, help="tokens-per-minute limit")
    g.add_argument("--timeout", type=float, default=120.0,
                   help="seconds per request to an endpoint (local models run each request "
                   "to completion)")
    g.add_argument("--max-retries", type=int, default=6,
                   help="retries per call on 429/5xx/timeouts/bad bodies (exponential backoff "
                   "with jitter, honouring Retry-After)")
    g.add_argument("--context-length", type=int, default=None,
                   help="the oracle's context window in tokens (local models know theirs); "
                   "longer records get their answer cut to fit, recorded")
    g.add_argument("--batch-size", type=int, default=8, help="local models: generation batch")
    g.add_argument("--prices", default=None, metavar="FILE",
                   help='JSON {"model": [usd_in_per_1M, usd_out_per_1M]} overriding the '
                   "built-in price list")
    g.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens")
    g.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens")


def add_guided_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guided", default=None, choices=("auto", "regex", "json", "grammar", "off"),
                   help="guided output: every reply in its declared shape, by construction. "
                   "Local models: constrained decoding (llguidance). Endpoints: the shape as a "
                   "regex (vLLM/SGLang), a GBNF grammar (llama.cpp server) or a JSON schema "
                   "(OpenAI structured outputs); auto tries them in turn and goes on unguided "
                   "where the server refuses them (found once, recorded). Default: auto for "
                   "local models, off for endpoints")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
