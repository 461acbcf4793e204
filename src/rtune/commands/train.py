"""Fine-tune a model on (recycled) instruction data: the paper's recipe by default (Vicuna
prompt, AdamW lr 2e-5, cosine, warmup 0.03, 3 epochs, global batch 128, max length 2048), loss
on the assistant tokens only. Multi-GPU / multi-node: accelerate launch --config_file
"$(rtune train --config-path fsdp)" -m rtune train ... (the accelerate configs for FSDP and
DeepSpeed ZeRO-3 ship inside the package)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..cli_fields import add_fields, values
from ..distributed import is_main_process
from ..errors import ConfigError
from ..extras import require
from ..train_config import ACCELERATE_CONFIGS, TrainConfig, accelerate_config

HELP = "fine-tune a model on instruction data (SFT, the paper's recipe)"

RECIPE = ("global_batch_size", "per_device_batch_size", "learning_rate", "epochs", "max_steps",
          "max_length", "warmup_ratio", "weight_decay", "lr_scheduler_type", "seed")


EXAMPLES = """\
examples:
  rtune train selected.json --base-model /models/Llama-2-7b-hf -o models/recycled-7b   # paper
  rtune train examples/alpaca_sample.json --base-model local -o models/demo --max-steps 20 \
        --global-batch-size 8 --per-device-batch-size 4       # a CPU demo with the embedded model
  accelerate launch --config_file "$(rtune train --config-path fsdp)" --num_processes 8 \
        -m rtune train selected.json --base-model /models/Llama-2-13b-hf -o models/r13b
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="training data: rtune output, Alpaca JSON/JSONL, ShareGPT, "
                   "messages JSONL, parquet or a Hugging Face dataset folder")
    add_fields(p, TrainConfig, only=("model", "template", "output_dir", "input_format"))
    p.add_argument("--config-path", choices=ACCELERATE_CONFIGS, default=None, metavar="NAME",
                   help="print the path of a shipped accelerate config (fsdp, deepspeed_zero3) "
                   "for accelerate launch --config_file, and exit")
    add_fields(p.add_argument_group("recipe"), TrainConfig, only=RECIPE)
    o = p.add_argument_group("options")
    add_fields(o, TrainConfig, exclude=(*RECIPE, "model", "template", "output_dir",
                                        "input_format"))
    o.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    kw = values(TrainConfig, args)
    kw["lora"] = kw["lora"] or kw["qlora"]
    return TrainConfig(**kw, progress_bar=not args.json)


def run(args: argparse.Namespace) -> int:
    if not args.config_path:
        require("train", "rtune train")
    from ..train import train

    if args.config_path:
        print(accelerate_config(args.config_path))
        return 0
    if not args.data:
        raise ConfigError("the training data is required: rtune train DATA --base-model ...")
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
