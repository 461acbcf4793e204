"""Supervised fine-tuning on (recycled) instruction data with transformers' Trainer.

Every check that can fail (settings, model path, template vs tokenizer, empty data) runs before
the model is loaded. Multi-GPU / multi-node: run under ``accelerate launch`` with one of the
configs shipped in ``rtune/configs/`` (``rtune train --config-path NAME``); Trainer picks up FSDP / DeepSpeed from the environment.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .distributed import is_main_process
from .errors import ConfigError, InputError
from .io import parse_item, read_records
from .records import Record
from .templates import (
    IGNORE_INDEX,
    chat_template,
    check_tokenizer,
    encode_conversation,
    end_of_turn,
    get_template,
)
from .train_config import BatchPlan, TrainConfig

log = logging.getLogger(__name__)
SUMMARY_FILE = "rtune_train.json"


@dataclass
class DataStats:
    records: int = 0  # read from the input
    used: int = 0  # kept for training
    truncated: list[int] = field(default_factory=list)  # source indices cut at max length
    dropped: list[int] = field(default_factory=list)  # no answer token left after the cut
    tokens: int = 0  # tokens of the kept records (one epoch)
    answer_tokens: int = 0  # tokens with a loss (one epoch)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    epochs: float
    losses: list[float]  # training loss at each logging step
    train_loss: float | None
    data: DataStats
    plan: BatchPlan
    tokens_seen: int  # non-padding tokens processed
    runtime_s: float
    tokens_per_s: float
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


def prepare_dataset(records: Iterable[Record], template: str, tokenizer: Any,
                    max_length: int) -> tuple[list[dict[str, list[int]]], DataStats]:
    """Tokenize records into ``input_ids`` / ``attention_mask`` / ``labels`` features."""
    stats = DataStats()
    features = []
    for rec in records:
        stats.records += 1
        enc = encode_conversation(template, rec.to_messages(), tokenizer, max_length)
        if enc.truncated:
            stats.truncated.append(rec.source_index)
        if enc.answer_tokens == 0:
            stats.dropped.append(rec.source_index)
            continue
        stats.used += 1
        stats.tokens += len(enc.input_ids)
        stats.answer_tokens += enc.answer_tokens
        features.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                         "labels": enc.labels})
    return features, stats


def train(data: str | os.PathLike | Iterable[Record | dict], config: TrainConfig, *,
          callbacks: list[Any] | None = None,
          echo: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on ``data`` (a dataset path or records) and save it.

    ``echo`` receives the human-readable plan (batch arithmetic, data counts); ``callbacks``
    are extra transformers ``TrainerCallback``s.
    """
    from .models import load_tokenizer, resolve_model

    say = _main_process_echo(echo)
    config.validate()
    plan = config.batch_plan()
    resume = _resume_checkpoint(config)
    _check_qlora(config)
    resolve_model(config.model)  # ConfigError for a model that does not exist
    tokenizer = load_tokenizer(config.model)
    check_tokenizer(config.template, tokenizer)
    if config.reflection_tokens:
        from .reflection import add_reflection_special_tokens

        added = add_reflection_special_tokens(tokenizer)  # the model is resized when it loads
        say(f"reflection tags as tokens: {added} added, vocabulary {len(tokenizer)}")

    records = _records(data, config.input_format)
    features, stats = prepare_dataset(records, config.template, tokenizer, config.max_length)
    source = str(data) if isinstance(data, (str, os.PathLike)) else "records"
    if stats.records == 0:
        raise InputError(source, "the dataset is empty: nothing to train on")
    if not features:
        raise ConfigError(f"all {stats.records} records lost every answer token at "
                          f"--max-length {config.max_length}: raise --max-length")
    say(plan.describe())
    say(f"{stats.used} of {stats.records} records, {stats.tokens} tokens "
        f"({stats.answer_tokens} trained); {len(stats.truncated)} truncated at "
        f"{config.max_length} tokens, {len(stats.dropped)} dropped (no answer token left)")
    per_step = plan.global_batch_size
    steps_per_epoch = max(1, math.ceil(len(features) / per_step))
    total = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    say(f"{steps_per_epoch} optimizer step(s) per epoch, {total} in all")
    if len(features) < per_step:
        say(f"note: {len(features)} records < global batch {per_step}: each optimizer step "
            "sees the whole dataset (lower --global-batch-size for small data)")

    trainer = _build_trainer(features, tokenizer, config, plan, callbacks)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    runtime = time.perf_counter() - started
    _save(trainer, tokenizer, config)

    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    seen = int(state.num_input_tokens_seen or 0)
    result = TrainResult(
        output_dir=Path(config.output_dir), steps=state.global_step, epochs=float(state.epoch or 0),
        losses=losses, train_loss=output.training_loss, data=stats, plan=plan, tokens_seen=seen,
        runtime_s=runtime, tokens_per_s=seen / runtime if runtime > 0 else 0.0,
        resumed_from=resume)
    if trainer.is_world_process_zero():
        summary = {"settings": config.to_dict(), "template": config.template,
                   "chat_template": tokenizer.chat_template, **result.to_dict()}
        path = Path(config.output_dir) / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return result


# -- internals -------------------------------------------------------------------------------

def _records(data: Any, fmt: str) -> Iterable[Record]:
    if isinstance(data, (str, os.PathLike)):
        return read_records(data, format=fmt)
    out = []
    for i, item in enumerate(data):
        out.append(item if isinstance(item, Record) else parse_item(item, path="records", index=i))
    return out


def _resume_checkpoint(config: TrainConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not config.resume:
        return None
    if isinstance(config.resume, str):
        if not Path(config.resume).is_dir():
            raise ConfigError(f"checkpoint {config.resume} not found")
        return config.resume
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    if last is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning",
                    config.output_dir)
    return last


def _main_process_echo(echo: Callable[[str], None] | None) -> Callable[[str], None]:
    if not is_main_process():
        return lambda _msg: None
    return echo or log.info


def _use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.bf16 is not None:
        if config.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            raise ConfigError("--bf16 needs a CUDA GPU with bf16 support (on CPU bf16 is "
                              "slower than fp32 here): drop --bf16")
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _build_trainer(features: list[dict], tokenizer: Any, config: TrainConfig, plan: BatchPlan,
                   callbacks: list[Any] | None) -> Any:
    import torch
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    from .models import load_model

    bf16 = _use_bf16(config)
    if config.qlora:
        model = _load_4bit(config)
    else:
        # fp32 master weights (bf16 autocast on GPU); a frozen LoRA base can stay in bf16.
        dtype = torch.bfloat16 if (bf16 and config.lora) else torch.float32
        # load on CPU: Trainer / accelerate place (or shard) the model on the right device(s)
        model, _ = load_model(config.model, device="cpu", dtype=dtype, for_training=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # tokens were added
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        extra: dict[str, Any] = {}
        if config.reflection_tokens:  # LoRA freezes the embeddings: train the new rows
            from .reflection import SPECIAL_TOKENS

            extra["trainable_token_indices"] = tokenizer.convert_tokens_to_ids(
                list(SPECIAL_TOKENS))
        model = get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, task_type="CAUSAL_LM", **extra))
    if config.packing:
        collator = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True,
                                          label_pad_token_id=IGNORE_INDEX)
    # a full-size checkpoint holds the weights and optimizer state (3x the model); only where
    # asked for (the final model is always saved)
    save = {"save_strategy": "no"} if config.save_steps is None else {
        "save_strategy": "steps", "save_steps": config.save_steps}
    args = TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio, lr_scheduler_type=config.lr_scheduler_type,
        optim="adamw_torch", max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        bf16=bf16, activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed, data_seed=config.seed, logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit, report_to="none",
        remove_unused_columns=False,
        # packed rows have no padding (and pad == EOS would undercount them)
        include_num_input_tokens_seen="all" if config.packing else "non_padding",
        disable_tqdm=not config.progress_bar, use_cpu=not torch.cuda.is_available(),
        **save)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(features),
                   data_collator=collator, processing_class=tokenizer, callbacks=callbacks)


def _check_qlora(config: TrainConfig) -> None:
    import torch

    if config.qlora and not torch.cuda.is_available():
        raise ConfigError("--qlora needs a CUDA GPU (bitsandbytes 4-bit layers); on CPU use "
                          "--lora")


def _load_4bit(config: TrainConfig) -> Any:
    """The base model quantized to 4-bit NF4 on this process's GPU, ready for k-bit training."""
    import torch
    from accelerate import PartialState
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .models import resolve_model

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(config.model), quantization_config=quant, dtype=torch.bfloat16,
        device_map={"": PartialState().local_process_index}, local_files_only=True)
    model.config.use_cache = False
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})


def _save(trainer: Any, tokenizer: Any, config: TrainConfig) -> None:
    """Model + tokenizer carrying the chat template it was trained with."""
    out = Path(config.output_dir)
    tokenizer.chat_template = chat_template(config.template, tokenizer)
    model = trainer.model
    eos_ids = [tokenizer.eos_token_id]
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn(config.template, tokenizer))
    if isinstance(eot_id, int) and eot_id != tokenizer.unk_token_id and eot_id not in eos_ids:
        eos_ids.append(eot_id)
    base = model.get_base_model() if config.lora else model
    base.config.use_cache = True
    if base.generation_config is not None:
        base.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        base.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.lora:
        trainer.save_model(str(out / "adapter"))
        # a 4-bit base cannot be merged exactly: QLoRA saves the adapter only
        if config.merge_lora and not config.qlora and trainer.args.world_size == 1:
            merged = model.merge_and_unload()
            merged.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        if config.lora:
            tokenizer.save_pretrained(out / "adapter")
    log.info("saved %s (template %s)", out, get_template(config.template).name)
