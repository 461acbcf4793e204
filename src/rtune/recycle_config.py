"""Settings of a recycling run (kept apart from the behaviour in recycle.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .cli_fields import settings_field
from .endpoint_config import EndpointConfig, check_settings
from .errors import ConfigError
from .guided import check_guided, guided_default
from .model_spec import is_url

STAGES = ("compress", "instruction", "response", "both", "reflection-format")
DEFAULT_STAGES = ("instruction", "response", "both")
# the candidate kind each stage produces
STAGE_KIND = {"compress": "compress", "instruction": "ins", "response": "res", "both": "both",
              "reflection-format": "reflection"}
# online: calls as they go; batch: the OpenAI Batch API; export/import: batch-format files
# for an offline engine (vLLM's batch runner, Ray Data) and their results
MODES = ("online", "batch", "export", "import")


@dataclass
class RecycleConfig(EndpointConfig):
    """The oracle (:class:`~rtune.endpoint_config.EndpointConfig`'s fields) and the
    recycling settings."""

    stages: tuple[str, ...] = DEFAULT_STAGES
    mode: str = "online"
    prompts_dir: str | None = settings_field(
        None, "folder of prompt YAML files overriding the packaged ones by name",
        flag="--prompts", metavar="DIR")
    with_example: bool | None = None  # worked example in the conversation; None: local only
    reask: int = settings_field(
        1, "times to re-ask when a reply misses a marker before falling back")
    temperature: float = settings_field(0.0, "oracle sampling temperature (0 = greedy)")
    top_p: float = settings_field(1.0, "nucleus sampling (temperature > 0)")
    max_tokens: int = settings_field(
        2048, "reply budget per call (bounded by the context left)")
    # auto | regex | json | grammar | off; None: auto for local oracles, off for endpoints and
    # in the batch modes
    guided: str | bool | None = None
    skip_invalid: bool = settings_field(
        False, "skip bad records (listed in `rtune status`) instead of stopping")
    limit: int | None = settings_field(None, "only the first N records", metavar="N")
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self, oracle: str | None = None) -> None:
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
        super().__post_init__(oracle)
        self._check_mode()
        check_settings(max_tokens=self.max_tokens)
        if self.reask < 0:
            raise ConfigError(f"--reask must be 0 or more (got {self.reask})")
        self.guided = check_guided(self.guided)

    def _check_mode(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose from {', '.join(MODES)}")
        http = is_url(self.spec)
        if self.replicas and not (http and all(is_url(r) for r in self.replicas)):
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
        """The name the requests carry (:attr:`~rtune.model_spec.ModelSpec.request_name`)."""
        return self.model_spec.request_name

    @property
    def local_loop_guard(self) -> int:
        """The loop guard of a guided local oracle; 0 where rtune does not decode (an endpoint,
        a batch engine)."""
        return 0 if self.mode != "online" or is_url(self.spec) else self.loop_guard

    @property
    def guided_mode(self) -> str:
        """The ``--guided`` mode in force (:func:`rtune.guided.guided_default`); in the batch
        modes off unless asked (their lines go to an endpoint or an engine's batch runner)."""
        if self.mode != "online":
            return self.guided or "off"
        return guided_default(self.guided, self.spec)

    @property
    def use_example(self) -> bool:
        if self.with_example is not None:
            return self.with_example
        return not self.model_spec.is_endpoint and self.mode == "online"

    def public(self) -> dict[str, Any]:
        """What is safe to store in the run: everything here (no secrets, only env names)."""
        d = asdict(self)
        d["oracle"] = d.pop("spec")  # the key stored runs have
        d["stages"] = list(self.stages)
        d["replicas"] = list(self.replicas)
        return d
