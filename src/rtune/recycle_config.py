"""Settings of a recycling run (kept apart from the behaviour in recycle.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError
from .guided import check_guided, guided_default
from .oracle.engine import check_settings

STAGES = ("compress", "instruction", "response", "both", "reflection-format")
DEFAULT_STAGES = ("instruction", "response", "both")
# the candidate kind each stage produces
STAGE_KIND = {"compress": "compress", "instruction": "ins", "response": "res", "both": "both",
              "reflection-format": "reflection"}
# online: calls as they go; batch: the OpenAI Batch API; export/import: batch-format files
# for an offline engine (vLLM's batch runner, Ray Data) and their results
MODES = ("online", "batch", "export", "import")


@dataclass
class RecycleConfig:
    stages: tuple[str, ...] = DEFAULT_STAGES
    oracle: str = "local"  # local | local:/path | llamacpp | http(s)://host/v1
    replicas: tuple[str, ...] = ()  # more base URLs serving the same model: one window
    mode: str = "online"
    model: str | None = None  # the served model name (required for HTTP oracles)
    api_key_env: str = "OPENAI_API_KEY"
    prompts_dir: str | None = None
    with_example: bool | None = None  # worked example in the conversation; None: local only
    reask: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    context_length: int | None = None  # the oracle's window; local models know their own
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    max_retries: int = 6
    batch_size: int = 8  # local oracles: generation batch
    # auto | regex | json | grammar | off; None: auto for local oracles, off for endpoints
    guided: str | bool | None = None
    prices_file: str | None = None
    price_in: float | None = None
    price_out: float | None = None
    skip_invalid: bool = False
    limit: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stages = tuple(s.strip() for s in self.stages if s.strip())
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)} "
                              f"(choose from {', '.join(STAGES)})")
        if not stages:
            raise ConfigError("--stages: name at least one stage")
        if "both" in stages and "instruction" not in stages:
            stages = ("instruction", *stages)  # both = response reflection of the ins result
        self.stages = stages
        if self.oracle.startswith(("http://", "https://")) and not self.model:
            raise ConfigError("--model is required with an HTTP oracle (the served model name)")
        self._check_mode()
        check_settings(concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm,
                       timeout=self.timeout, max_retries=self.max_retries,
                       batch_size=self.batch_size, max_tokens=self.max_tokens,
                       context_length=self.context_length)
        if self.reask < 0:
            raise ConfigError(f"--reask must be 0 or more (got {self.reask})")
        self.guided = check_guided(self.guided)
        if self.mode != "online" and self.guided not in (None, "off"):
            raise ConfigError(f"--guided {self.guided} is not available with --mode "
                              f"{self.mode}: batch lines carry no guided fields")

    def _check_mode(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose from {', '.join(MODES)}")
        http = self.oracle.startswith(("http://", "https://"))
        self.replicas = tuple(self.replicas)
        if self.replicas and not (http and all(r.startswith(("http://", "https://"))
                                               for r in self.replicas)):
            raise ConfigError("several --oracle values are replicas of one served model: "
                              "give each as an http(s):// base URL")
        if self.replicas and self.mode not in ("online",):
            raise ConfigError(f"--mode {self.mode} takes one --oracle (replicas serve the "
                              "online mode)")
        if self.mode == "batch" and not http:
            raise ConfigError("--mode batch sends the requests to an OpenAI Batch API: give "
                              "its --oracle base URL, e.g. https://api.openai.com/v1")
        if self.mode in ("export", "import") and not self.model:
            raise ConfigError(f"--mode {self.mode} needs --model: the model name the batch "
                              "engine serves (it goes into every request line)")

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return "smollm2-135m-instruct" if self.oracle in ("local", "llamacpp") else self.oracle

    @property
    def guided_mode(self) -> str:
        """The ``--guided`` mode in force (:func:`rtune.guided.guided_default`); off in the
        batch modes, whose lines carry no guided fields."""
        if self.mode != "online":
            return "off"
        return guided_default(self.guided, self.oracle)

    @property
    def use_example(self) -> bool:
        if self.with_example is not None:
            return self.with_example
        return not self.oracle.startswith(("http://", "https://")) and self.mode == "online"

    def public(self) -> dict[str, Any]:
        """What is safe to store in the run: everything here (no secrets, only env names)."""
        d = asdict(self)
        d["stages"] = list(self.stages)
        d["replicas"] = list(self.replicas)
        return d
