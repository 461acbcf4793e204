"""How to reach a model and how hard to push it: every endpoint setting with its default, help
and check, declared once, and the one factory of the engine that calls the model.

The settings of every stage that calls a model (recycle, reflect, generate, judge) hold these
fields; their commands get the same options from here, refused the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import InitVar, dataclass, fields
from typing import TYPE_CHECKING, Any

from .cli_fields import add_fields, settings_field, values
from .errors import ConfigError
from .model_spec import ModelSpec, is_url

if TYPE_CHECKING:
    from .oracle.base import Backend
    from .oracle.engine import Engine, EngineConfig
    from .oracle.pricing import Prices
    from .store import RunStore

SPEC_HELP = ("'local' (embedded SmolLM2-135M-Instruct, no key, no network), 'local:/path' (HF "
             "folder or .gguf), 'llamacpp', or the base URL of an OpenAI-compatible server, "
             "e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (vLLM, Ollama, "
             "llama.cpp, TGI)")


def check_settings(*, concurrency: int = 1, rpm: float | None = None, tpm: float | None = None,
                   timeout: float = 1.0, max_retries: int = 0, batch_size: int = 1,
                   max_tokens: int = 1, context_length: int | None = None) -> None:
    """Refuse, naming the option, a setting of the model endpoint options that cannot work.

    Every model-calling command calls this before it creates a file or loads a model."""
    at_least_one = {"concurrency": concurrency, "batch_size": batch_size,
                    "max_tokens": max_tokens, "context_length": context_length}
    positive = {"rpm": rpm, "tpm": tpm, "timeout": timeout}
    for name, value in at_least_one.items():
        if value is not None and value < 1:
            raise ConfigError(f"{_flag(name)} must be at least 1 (got {value})")
    for name, value in positive.items():
        if value is not None and not value > 0:  # also refuses NaN
            raise ConfigError(f"{_flag(name)} must be greater than 0 (got {value:g})")
    if max_retries < 0:
        raise ConfigError(f"--max-retries must be 0 or more (got {max_retries})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class EndpointConfig:
    """A model (``spec``, with ``model`` its served name on an endpoint) and the settings of
    the calls to it. ``replicas``: more base URLs serving the same model (one window).
    ``oracle=`` is accepted as the older name of ``spec``."""

    oracle: InitVar[str | None] = None

    spec: str = settings_field("local", SPEC_HELP)
    replicas: tuple[str, ...] = ()
    model: str | None = settings_field(
        None, "model name on the server (required for URLs), e.g. gpt-4o-mini", metavar="NAME")
    api_key_env: str = settings_field(
        "OPENAI_API_KEY", "environment variable holding the API key (the key is never logged "
        "or stored)", metavar="NAME")
    concurrency: int = settings_field(16, "requests in flight at once (sliding window)")
    rpm: float | None = settings_field(None, "requests-per-minute limit")
    tpm: float | None = settings_field(None, "tokens-per-minute limit")
    max_retries: int = settings_field(
        6, "retries per call on 429/5xx/timeouts/bad bodies (exponential backoff with jitter, "
        "honouring Retry-After)")
    timeout: float = settings_field(
        120.0, "seconds per request to an endpoint (local models run each request to "
        "completion)")
    context_length: int | None = settings_field(
        None, "the model's context window in tokens (local models know theirs); longer records "
        "get their answer cut to fit, recorded")
    batch_size: int = settings_field(8, "local models: generation batch")
    loop_guard: int = settings_field(
        64, "local models, guided replies: a text whose latest N characters or more repeat "
        "verbatim (blanks aside, one whole copy at least) the ones just before them is ended "
        "there as if the model had ended it; one copy is kept and the reply records it (0: "
        "never)", metavar="N")
    prices_file: str | None = settings_field(
        None, 'JSON {"model": [usd_in_per_1M, usd_out_per_1M]} overriding the built-in price '
        "list", flag="--prices", metavar="FILE")
    price_in: float | None = settings_field(None, "USD per 1M input tokens")
    price_out: float | None = settings_field(None, "USD per 1M output tokens")

    def __post_init__(self, oracle: str | None = None) -> None:
        if oracle is not None:
            self.spec = oracle
        check_settings(concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm,
                       timeout=self.timeout, max_retries=self.max_retries,
                       batch_size=self.batch_size, context_length=self.context_length)
        if self.loop_guard < 0:
            raise ConfigError(f"--loop-guard must be 0 or more (got {self.loop_guard})")
        if is_url(self.spec) and not self.model:
            raise ConfigError(f"--model is required with an endpoint ({self.spec}): the served "
                              "model name")
        self.replicas = tuple(self.replicas)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.parse(self.spec, self.model)

    def endpoint_values(self) -> dict[str, Any]:
        """These settings alone, by name (a stage's settings hold them among others)."""
        return {name: getattr(self, name) for name in ENDPOINT_FIELDS}

    def endpoint(self) -> EndpointConfig:
        return EndpointConfig(**self.endpoint_values())

    def prices(self, model: str | None = None) -> Prices:
        """The price list, with ``price_in`` / ``price_out`` for ``model`` (default: the
        name the requests carry)."""
        from .oracle.pricing import Prices

        return Prices.load(self.prices_file, model=model or self.model_spec.request_name,
                           price_in=self.price_in, price_out=self.price_out)

    def engine_config(self, prices: Prices | None = None) -> EngineConfig:
        from .oracle.engine import EngineConfig

        return EngineConfig(concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm,
                            max_retries=self.max_retries, timeout=self.timeout,
                            prices=prices if prices is not None else self.prices())

    def require(self) -> None:
        """Refuse a model that cannot run here (a missing extra, an unknown spec); cheap."""
        from .oracle import require_backend

        require_backend(self.spec)

    def backend(self) -> Backend:
        from .oracle import make_backend

        return make_backend(self.spec, model=self.model, api_key_env=self.api_key_env,
                            timeout=self.timeout, context_length=self.context_length,
                            batch_size=self.batch_size, replicas=self.replicas)

    def engine(self, store: RunStore | None = None, *, backend: Backend | None = None,
               on_call: Any = None, prices: Prices | None = None) -> Engine:
        """The engine over this model (``backend``: one already made for it)."""
        from .oracle.engine import Engine

        return Engine(backend or self.backend(), store, self.engine_config(prices),
                      on_call=on_call)


ENDPOINT_FIELDS = tuple(f.name for f in fields(EndpointConfig))


def add_endpoint_arguments(p: argparse.ArgumentParser, *, flag: str | None = "--oracle",
                           default: str = "local", replicas: bool = False,
                           aliases: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
    """The model endpoint options of a command; ``flag`` names the model's role (``--oracle``,
    ``--judge``; None: the command takes the model otherwise, e.g. as its first argument),
    ``aliases`` are older spellings of it (accepted, hidden). ``replicas``: the flag may be
    given several times (servers of one model); the values come as a list. ``exclude``:
    fields the command has no use for."""
    g = p.add_argument_group("model endpoint")
    spec_kw: dict[str, Any] = {"default": default, "help": SPEC_HELP}
    if replicas:
        spec_kw = {"default": None, "action": "append", "help": SPEC_HELP + (
            f"; give {flag} again for each replica of the same served model (one window over "
            "all, least-outstanding routing; --concurrency counts all of them; default "
            f"{default})")}
    if flag:
        g.add_argument(flag, dest="spec", metavar="SPEC", **spec_kw)
    for alias in aliases:
        g.add_argument(alias, dest="spec", default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                       **{k: v for k, v in spec_kw.items() if k == "action"})
    add_fields(g, EndpointConfig, exclude=("spec", *exclude))


def endpoint_values(args: argparse.Namespace, default: str = "local") -> dict[str, Any]:
    """EndpointConfig's keywords from a command's parsed options (the first ``--oracle`` the
    spec, the others its replicas)."""
    kw = values(EndpointConfig, args)
    if isinstance(kw.get("spec"), list) or kw.get("spec") is None:
        specs = kw.get("spec") or [default]
        kw["spec"], kw["replicas"] = specs[0], tuple(specs[1:])
    return kw
