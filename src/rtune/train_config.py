"""Settings of ``rtune train``; the defaults are the Reflection-Tuning paper's recipe ."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distributed import process
from .errors import ConfigError
from .templates import get_template

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

    model: str = field(default="local", metadata={
        "help": "'local' (embedded SmolLM2-135M-Instruct), 'local:/path' or a model folder"})
    output_dir: str = field(default="models/rtune-sft", metadata={
        "help": "where the model, tokenizer, checkpoints and rtune_train.json go"})
    template: str = field(default="vicuna", metadata={
        "help": "prompt template: vicuna, alpaca, llama2, llama3, chatml or auto"})
    input_format: str = "auto"

    # the paper's recipe
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    epochs: float = 3.0
    global_batch_size: int = 128
    per_device_batch_size: int = 4
    max_length: int = 2048
    max_steps: int = -1  # > 0 overrides epochs
    max_grad_norm: float = 1.0

    # options
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    merge_lora: bool = True  # save merged full weights (single process), adapter kept in adapter/
    qlora: bool = False  # LoRA on a 4-bit NF4 base (bitsandbytes, CUDA); saves the adapter only
    packing: bool = False  # padding-free: each batch is one row of concatenated records
    gradient_checkpointing: bool = False
    bf16: bool | None = None  # None: bf16 mixed precision on a CUDA GPU that supports it
    seed: int = 42
    resume: bool | str = False  # True: last checkpoint in output_dir; str: that checkpoint
    save_steps: int | None = None  # None: no intermediate checkpoints (--resume needs them)
    save_total_limit: int | None = 2
    logging_steps: int = 10
    world_size: int | None = None  # None: $WORLD_SIZE (set by accelerate / torchrun), else 1
    progress_bar: bool = True
    # the Reflection 70B tags (<thinking> ... </output>) as single tokens: new embedding rows
    # (mean-initialised, resized), off by default (see rtune.reflection)
    reflection_tokens: bool = False

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
