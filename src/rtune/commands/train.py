"""Fine-tune a model on (recycled) instruction data: the paper's recipe by default (Vicuna
prompt, AdamW lr 2e-5, cosine, warmup 0.03, 3 epochs, global batch 128, max length 2048), loss
on the assistant tokens only. Multi-GPU / multi-node: accelerate launch --config_file
"$(rtune train --config-path fsdp)" -m rtune train ... (the accelerate configs for FSDP and
DeepSpeed ZeRO-3 ship inside the package)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..distributed import is_main_process
from ..errors import ConfigError
from ..extras import require
from ..io import INPUT_FORMATS
from ..templates import TEMPLATES
from ..train_config import ACCELERATE_CONFIGS, TrainConfig, accelerate_config

HELP = "fine-tune a model on instruction data (SFT, the paper's recipe)"

_D = TrainConfig()


EXAMPLES = """\
examples:
  rtune train selected.json --model /models/Llama-2-7b-hf -o models/recycled-7b   # paper recipe
  rtune train examples/alpaca_sample.json --model local -o models/demo --max-steps 20 \
        --global-batch-size 8 --per-device-batch-size 4       # a CPU demo with the embedded model
  accelerate launch --config_file "$(rtune train --config-path fsdp)" --num_processes 8 \
        -m rtune train selected.json --model /models/Llama-2-13b-hf -o models/r13b
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="training data: rtune output, Alpaca JSON/JSONL, ShareGPT, "
                   "messages JSONL, parquet or a Hugging Face dataset folder")
    p.add_argument("--model", default=_D.model,
                   help="'local' (embedded SmolLM2-135M-Instruct), 'local:/path' or a path to "
                   "a Hugging Face model folder or .gguf file")
    p.add_argument("--template", default=_D.template, choices=list(TEMPLATES),
                   help="prompt template (vicuna = FastChat v1.1, the paper's; llama3 = Llama "
                   "3.1 chat; auto = the tokenizer's own chat template)")
    p.add_argument("-o", "--output", default=_D.output_dir,
                   help="output folder (model, tokenizer with its chat template, checkpoints, "
                   "rtune_train.json)")
    p.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                   help="format of the training data (auto: from the file)")
    p.add_argument("--config-path", choices=ACCELERATE_CONFIGS, default=None, metavar="NAME",
                   help="print the path of a shipped accelerate config (fsdp, deepspeed_zero3) "
                   "for accelerate launch --config_file, and exit")
    g = p.add_argument_group("recipe")
    g.add_argument("--global-batch-size", type=int, default=_D.global_batch_size,
                   help="sequences per optimizer step = per-device batch x gradient "
                   "accumulation x processes (accumulation is computed)")
    g.add_argument("--per-device-batch-size", type=int, default=_D.per_device_batch_size,
                   help="sequences per forward pass on each device")
    g.add_argument("--learning-rate", type=float, default=_D.learning_rate,
                   help="peak AdamW learning rate")
    g.add_argument("--epochs", type=float, default=_D.epochs, help="training epochs")
    g.add_argument("--max-steps", type=int, default=_D.max_steps,
                   help="stop after this many optimizer steps (> 0 overrides --epochs)")
    g.add_argument("--max-length", type=int, default=_D.max_length,
                   help="tokens per record; longer records are cut (counted), records with no "
                   "answer token left are dropped (counted)")
    g.add_argument("--warmup-ratio", type=float, default=_D.warmup_ratio,
                   help="fraction of the steps with linear warmup")
    g.add_argument("--weight-decay", type=float, default=_D.weight_decay, help="AdamW weight decay")
    g.add_argument("--lr-scheduler", default=_D.lr_scheduler_type,
                   help="learning-rate schedule (transformers name: cosine, linear, constant...)")
    g.add_argument("--seed", type=int, default=_D.seed, help="random seed (data order, init)")
    o = p.add_argument_group("options")
    o.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of "
                   "all weights; the saved folder holds merged weights and adapter/")
    o.add_argument("--qlora", action="store_true",
                   help="QLoRA: LoRA adapters on the model loaded in 4-bit NF4 (needs a CUDA "
                   "GPU and bitsandbytes); the saved folder holds the adapter in adapter/")
    o.add_argument("--lora-r", type=int, default=_D.lora_r, help="LoRA rank")
    o.add_argument("--lora-alpha", type=int, default=_D.lora_alpha, help="LoRA alpha")
    o.add_argument("--packing", "--padding-free", dest="packing", action="store_true",
                   help="padding-free batches: the records of a batch are concatenated into "
                   "one row, attention never crosses records (no padding compute)")
    o.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory, slower)")
    o.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 mixed precision (default: on for a CUDA GPU that supports it)")
    o.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="resume from the last checkpoint in the output folder (or the one "
                   "given; checkpoints exist only with --save-steps)")
    o.add_argument("--save-steps", type=int, default=None,
                   help="save a full checkpoint (weights + optimizer state) every N optimizer "
                   "steps (default: none; the final model is always saved)")
    o.add_argument("--logging-steps", type=int, default=_D.logging_steps,
                   help="log the loss every N steps")
    o.add_argument("--reflection-tokens", action="store_true",
                   help="add the <thinking>/<reflection>/<output> tags as single tokens "
                   "(embeddings resized, new rows mean-initialised); off by default")
    o.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, output_dir=args.output, template=args.template,
        input_format=args.input_format, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        lr_scheduler_type=args.lr_scheduler, epochs=args.epochs,
        global_batch_size=args.global_batch_size,
        per_device_batch_size=args.per_device_batch_size, max_length=args.max_length,
        max_steps=args.max_steps, lora=args.lora or args.qlora, qlora=args.qlora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, packing=args.packing,
        gradient_checkpointing=args.gradient_checkpointing, bf16=args.bf16, seed=args.seed,
        resume=args.resume, save_steps=args.save_steps, logging_steps=args.logging_steps,
        progress_bar=not args.json, reflection_tokens=args.reflection_tokens)


def run(args: argparse.Namespace) -> int:
    if not args.config_path:
        require("train", "rtune train")
    from ..train import train

    if args.config_path:
        print(accelerate_config(args.config_path))
        return 0
    if not args.data:
        raise ConfigError("the training data is required: rtune train DATA --model ...")
    config = config_from_args(args)
    config.validate()  # settings errors before the heavy imports

    def echo(msg: str) -> None:
        print(f"rtune train: {msg}", file=sys.stderr)

    if args.json:  # Trainer prints its log lines to stdout; keep stdout for the JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            result = train(args.data, config, echo=echo)
    else:
        result = train(args.data, config, echo=echo)
    if not is_main_process():
        return 0  # under accelerate / torchrun only the main process reports
    if args.json:
        from ._common import print_json

        print_json(result.to_dict())
        return 0
    if result.losses:
        loss = f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
    else:
        loss = f"mean loss {result.train_loss:.4f}" if result.train_loss is not None else "no loss"
    print(f"saved {result.output_dir}: {result.steps} steps, {loss}, "
          f"{result.tokens_seen} tokens at {result.tokens_per_s:.0f} tokens/s "
          f"({result.data.used} records, {len(result.data.truncated)} truncated, "
          f"{len(result.data.dropped)} dropped)")
    return 0
