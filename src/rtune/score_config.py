"""Settings of ``rtune score`` (student-model IFD / r-IFD scoring)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

NAMESPACE = "scores"  # the run store's items namespace holding one score row per candidate
# every field of a score row: the four passes' perplexities and mean losses, and the ratios
SCORE_FIELDS = (
    "ppl_Q_direct", "ppl_A_direct", "ppl_Q_condition", "ppl_A_condition",
    "loss_Q_direct", "loss_A_direct", "loss_Q_condition", "loss_A_condition",
    "ifd_ppl", "rifd_ppl", "ifd_loss", "rifd_loss",
)
# the fields statistics and the report summarise (the ratios and the perplexities)
SUMMARY_FIELDS = ("ifd_ppl", "rifd_ppl", "ifd_loss", "rifd_loss", "ppl_A_direct",
                  "ppl_A_condition", "ppl_Q_direct", "ppl_Q_condition")


def score_key(source_index: int, kind: str) -> str:
    """The key of a candidate's score row in the run store."""
    return f"{source_index}:{kind}"


def parse_score_key(key: str) -> tuple[int, str]:
    """``(source_index, kind)`` of a :func:`score_key`."""
    idx, _, kind = key.partition(":")
    return int(idx), kind


# The authors' student prompts (Selective Reflection-Tuning scoring code): (no input, with input).
SCORE_PROMPTS: dict[str, tuple[str, str]] = {
    "vicuna": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. "
        "USER: {instruction} ASSISTANT:",
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. "
        "USER: {instruction}\nInput:\n{input} ASSISTANT:",
    ),
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:",
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
    ),
    "wizardlm": (
        "{instruction}\n\n### Response:",
        "{instruction}\n{input}\n\n### Response:",
    ),
}
SCORE_ALIASES = {"wiz": "wizardlm", "fastchat": "vicuna", "auto": "chat"}

# r(y): asks the student to guess the instruction behind an answer (our wording).
REVERSE_PROMPT = ("Here is an answer that someone wrote for an instruction. Guess the "
                  "instruction it answers.\n\nAnswer:\n{output}\n\nWrite the instruction that "
                  "the answer above responds to.")


def template_names() -> list[str]:
    from .templates import TEMPLATES

    names = list(SCORE_PROMPTS) + ["chat"]
    return names + [t for t in TEMPLATES if t not in names and t != "auto"]


@dataclass
class ScoreConfig:
    """How the student model scores candidates (defaults: the authors' settings)."""

    student: str = field(default="local", metadata={
        "help": "'local' (embedded SmolLM2-135M-Instruct), 'local:/path' or a model folder"})
    template: str = field(default="vicuna", metadata={
        "help": "student prompt: vicuna (authors' default), alpaca, wizardlm, chat (the "
        "tokenizer's own chat template) or a training template (llama2, llama3, chatml)"})
    max_length: int = 2048
    batch_size: int = 8  # sequences per forward pass (each candidate needs four)
    device: str = "auto"  # auto: CUDA when available (or accelerate's device), else CPU
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    reverse_prompt: str = REVERSE_PROMPT
    # run the prompt's shared head once per batch (same numbers); None: on CUDA only (on CPU
    # copying the cached head into every layer's KV costs more than the ~40 tokens it saves)
    prefix_cache: bool | None = None
    force: bool = False  # rescore keys already stored (e.g. with another student)

    def __post_init__(self) -> None:
        self.template = SCORE_ALIASES.get(self.template.lower(), self.template.lower())

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot work, before loading any model."""
        if self.template not in template_names():
            raise ConfigError(f"unknown student template {self.template!r}: choose one of "
                              f"{', '.join(template_names())}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if "{output}" not in self.reverse_prompt:
            raise ConfigError("reverse_prompt must contain the placeholder {output}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that change the numbers: stored scores must match these to be reused."""
        return {"student": self.student, "template": self.template,
                "max_length": self.max_length, "reverse_prompt": self.reverse_prompt}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
