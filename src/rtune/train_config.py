"""Settings of ``rtune train``; the defaults are the Reflection-Tuning paper's recipe ."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_fields import settings_field
from .distributed import process
from .errors import ConfigError
from .io import INPUT_FORMATS
from .templates import TEMPLATES, get_template

ACCELERATE_CONFIGS = ("fsdp", "deepspeed_zero3")


def accelerate_config(name: str) -> Path:
    """The path of an accelerate config shipped in the package (``rtune/configs/NAME.yaml``)."""
    if name not in ACCELERATE_CONFIGS:
        raise ConfigError(f"unknown accelerate config {name!r}: expected one of "
                          f"{', '.join(ACCELERATE_CONFIGS)}")
    return Path(__file__).parent / "configs" / f"{name}.yaml"


@dataclass
class BatchPlan:
    """global batch = per-device batch x gradient accumulation x world size."""

    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    world_size: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch_size} = {self.per_device_batch_size} per device"
                f" x {self.gradient_accumulation_steps} gradient accumulation"
                f" x {self.world_size} process(es)")


@dataclass
class TrainConfig:
    """Supervised fine-tuning settings (paper defaults: Vicuna prompt, AdamW lr 2e-5, weight
    decay 0, warmup ratio 0.03, cosine schedule, 3 epochs, global batch 128, max length 2048)."""

    model: str = settings_field(
        "local", "the model to fine-tune: 'local' (embedded SmolLM2-135M-Instruct), "
        "'local:/path', a path to a Hugging Face model folder or .gguf file, or a Hub id in the "
        "local Hugging Face cache", flag="--base-model", aliases=("--model",), metavar="SPEC")
    output_dir: str = settings_field(
        "models/rtune-sft", "output folder (model, tokenizer with its chat template, "
        "checkpoints, rtune_train.json)", flag=("-o", "--output"), metavar="OUTPUT")
    template: str = settings_field(
        "vicuna", "prompt template (vicuna = FastChat v1.1, the paper's; llama3 = Llama 3.1 "
        "chat; auto = the tokenizer's own chat template)", choices=tuple(TEMPLATES))
    input_format: str = settings_field(
        "auto", "format of the training data (auto: from the file)", choices=INPUT_FORMATS)

    # the paper's recipe
    learning_rate: float = settings_field(2e-5, "peak AdamW learning rate")
    weight_decay: float = settings_field(0.0, "AdamW weight decay")
    warmup_ratio: float = settings_field(0.03, "fraction of the steps with linear warmup")
    lr_scheduler_type: str = settings_field(
        "cosine", "learning-rate schedule (transformers name: cosine, linear, constant...)",
        flag="--lr-scheduler")
    epochs: float = settings_field(3.0, "training epochs")
    global_batch_size: int = settings_field(
        128, "sequences per optimizer step = per-device batch x gradient accumulation x "
        "processes (accumulation is computed)")
    per_device_batch_size: int = settings_field(
        4, "sequences per forward pass on each device")
    max_length: int = settings_field(
        2048, "tokens per record; longer records are cut (counted), records with no answer "
        "token left are dropped (counted)")
    max_steps: int = settings_field(
        -1, "stop after this many optimizer steps (> 0 overrides --epochs)")
    max_grad_norm: float = 1.0

    # options
    lora: bool = settings_field(
        False, "train LoRA adapters (peft) instead of all weights; the saved folder holds "
        "merged weights and adapter/")
    lora_r: int = settings_field(16, "LoRA rank")
    lora_alpha: int = settings_field(32, "LoRA alpha")
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    merge_lora: bool = True  # save merged full weights (single process), adapter kept in adapter/
    qlora: bool = settings_field(
        False, "QLoRA: LoRA adapters on the model loaded in 4-bit NF4 (needs a CUDA GPU and "
        "bitsandbytes); the saved folder holds the adapter in adapter/")
    packing: bool = settings_field(
        False, "padding-free batches: the records of a batch are concatenated into one row, "
        "attention never crosses records (no padding compute)",
        flag=("--packing", "--padding-free"))
    gradient_checkpointing: bool = settings_field(
        False, "recompute activations in the backward pass (less memory, slower)")
    bf16: bool | None = settings_field(
        None, "bf16 mixed precision (default: on for a CUDA GPU that supports it)")
    seed: int = settings_field(42, "random seed (data order, init)")
    resume: bool | str = settings_field(
        False, "resume from the last checkpoint in the output folder (or the one given; "
        "checkpoints exist only with --save-steps)", nargs="?", const=True,
        metavar="CHECKPOINT")
    save_steps: int | None = settings_field(
        None, "save a full checkpoint (weights + optimizer state) every N optimizer steps "
        "(default: none; the final model is always saved)")
    save_total_limit: int | None = 2
    logging_steps: int = settings_field(10, "log the loss every N steps")
    world_size: int | None = None  # None: $WORLD_SIZE (set by accelerate / torchrun), else 1
    progress_bar: bool = True
    # the Reflection 70B tags (<thinking> ... </output>) as single tokens: new embedding rows
    # (mean-initialised, resized), off by default (see rtune.reflection)
    reflection_tokens: bool = settings_field(
        False, "add the <thinking>/<reflection>/<output> tags as single tokens (embeddings "
        "resized, new rows mean-initialised); off by default")

    def validate(self) -> None:
        """Raise ConfigError for any setting that cannot work; runs before any compute."""
        get_template(self.template)
        positive = {"learning_rate": self.learning_rate, "epochs": self.epochs,
                    "global_batch_size": self.global_batch_size,
                    "per_device_batch_size": self.per_device_batch_size,
                    "max_length": self.max_length, "logging_steps": self.logging_steps}
        for name, value in positive.items():
            if not value or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be at least 2 (got {self.max_length})")
        if self.max_steps == 0 or self.max_steps < -1:  # -1: not set, --epochs decides
            raise ConfigError(f"--max-steps must be at least 1 (got {self.max_steps}); leave it "
                              "out to train for --epochs")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0 (got {self.weight_decay})")
        if self.save_steps is not None and self.save_steps <= 0:
            raise ConfigError(f"--save-steps must be > 0 (got {self.save_steps})")
        if self.qlora:
            self.lora = True
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError("--qlora loads the model in 4 bits with bitsandbytes, which "
                                  "is not installed: pip install bitsandbytes (or use --lora)")
        if self.lora and (self.lora_r <= 0 or self.lora_alpha <= 0):
            raise ConfigError(f"--lora needs r > 0 and alpha > 0 (got {self.lora_r}, "
                              f"{self.lora_alpha})")
        if os.path.isfile(self.output_dir):
            raise ConfigError(f"output {self.output_dir} is a file, not a folder")
        self.batch_plan()

    def batch_plan(self) -> BatchPlan:
        world = self.world_size or process()[1]
        per_step = self.per_device_batch_size * world
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global batch {self.global_batch_size} is not a multiple of per-device batch "
                f"{self.per_device_batch_size} x {world} process(es) = {per_step}: change "
                "--global-batch-size or --per-device-batch-size")
        return BatchPlan(self.global_batch_size, self.per_device_batch_size,
                         self.global_batch_size // per_step, world)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
