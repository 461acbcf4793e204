"""Settings of ``rtune score`` (student-model IFD / r-IFD scoring)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .cli_fields import settings_field
from .errors import ConfigError

# every field of a score row: the four passes' perplexities and mean losses, and the ratios
SCORE_FIELDS = (
    "ppl_Q_direct", "ppl_A_direct", "ppl_Q_condition", "ppl_A_condition",
    "loss_Q_direct", "loss_A_direct", "loss_Q_condition", "loss_A_condition",
    "ifd_ppl", "rifd_ppl", "ifd_loss", "rifd_loss",
)
# the fields statistics and the report summarise (the ratios and the perplexities)
SUMMARY_FIELDS = ("ifd_ppl", "rifd_ppl", "ifd_loss", "rifd_loss", "ppl_A_direct",
                  "ppl_A_condition", "ppl_Q_direct", "ppl_Q_condition")


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
# the authors' r(y) in their released scoring code (data_analysis.py)
AUTHORS_REVERSE_PROMPT = ("Below is the response to an instruction, please guess the "
                          "corresponding instruction for the given response.\n{output}\n"
                          "Generate the instruction for the above response.")
# x = instruction + INPUT_JOIN + input (the Alpaca convention); the authors' code joins with ""
INPUT_JOIN = "\n\n"
AUTHORS = {"reverse_prompt": AUTHORS_REVERSE_PROMPT, "input_join": ""}


def template_names() -> list[str]:
    from .templates import TEMPLATES

    names = list(SCORE_PROMPTS) + ["chat"]
    return names + [t for t in TEMPLATES if t not in names and t != "auto"]


@dataclass
class ScoreConfig:
    """How the student model scores candidates. Defaults: the authors' settings, except r(y)
    and the input join, which are rtune's own (:data:`AUTHORS` holds the authors')."""

    student: str = settings_field(
        "local", "'local' (embedded SmolLM2-135M-Instruct), 'local:/path' or a path to a "
        "Hugging Face model folder or .gguf file")
    template: str = settings_field(
        "vicuna", "student prompt: vicuna (the authors' choice), alpaca, wizardlm, chat (the "
        "tokenizer's own chat template) or a training template (llama2, llama3, chatml)")
    batch_size: int = settings_field(8, "sequences per forward pass (each candidate needs four)")
    max_length: int = settings_field(
        2048, "tokens per sequence; longer texts are cut as the authors did (recorded as "
        "truncated)")
    device: str = settings_field("auto", "auto (CUDA when available, or accelerate's device), "
                                 "cpu, cuda, cuda:1, mps ...")
    dtype: str | None = settings_field(None, "default: bfloat16 on CUDA, float32 on CPU",
                                       choices=("float32", "bfloat16", "float16"))
    reverse_prompt: str = field(default=REVERSE_PROMPT, metadata={
        "help": "r(y) for r-IFD, with the placeholder {output}"})
    input_join: str = field(default=INPUT_JOIN, metadata={
        "help": "text between instruction and input in x (r-IFD's target; a chat template's "
        "user turn); the authors' code uses \"\""})
    # run the prompt's shared head once per batch (same numbers); None: on CUDA only (on CPU
    # copying the cached head into every layer's KV costs more than the ~40 tokens it saves)
    prefix_cache: bool | None = None
    force: bool = settings_field(
        False, "rescore candidates that already have scores (e.g. a new student)")

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
        """The settings that change the numbers: stored scores must match these to be reused
        (the student by its name, as score rows record it)."""
        from .models import model_name

        return settings_identity(model_name(self.student), self.template, self.max_length,
                                 self.reverse_prompt, self.input_join)

    def fingerprint(self) -> str:
        """A short digest of :meth:`identity`, stored with every score row."""
        return fingerprint(self.identity())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_identity(student: str, template: str, max_length: int,
                      reverse_prompt: str = REVERSE_PROMPT,
                      input_join: str = INPUT_JOIN) -> dict[str, Any]:
    """The scoring settings that change the numbers; a stored row without a settings
    fingerprint counts as made with the default r(y) and join."""
    return {"student": student, "template": template, "max_length": max_length,
            "reverse_prompt": reverse_prompt, "input_join": input_join}


def fingerprint(identity: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``identity`` as sorted JSON."""
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
