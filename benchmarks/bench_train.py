"""Training throughput: `rtune train` vs TRL's SFTTrainer, same model, data, length, batch.

Each variant runs in its own process (clean peak memory), on the embedded SmolLM2-135M-Instruct
(fp32, CPU by default) for a few optimizer steps over real variable-length Alpaca records.
tokens/s = non-padding tokens processed / seconds inside ``trainer.train()``; tokens per CPU
second uses this process's CPU time over the same span (steadier on a shared machine).

    python benchmarks/bench_train.py                     # defaults below
    python benchmarks/bench_train.py --steps 8 --batch 8 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cherry_alpaca_5_percent.json"
VARIANTS = {
    "trl": "TRL SFTTrainer (padding, completion-only loss)",
    "rtune": "rtune train (padding)",
    "rtune-packing": "rtune train --packing (padding-free)",
}


def _records(args: argparse.Namespace) -> list:
    from rtune.io import read_records

    out = []
    for rec in read_records(args.data):
        out.append(rec)
        if len(out) >= args.records:
            break
    return out


def _clock() -> object:
    """A callback timing ``trainer.train()``: wall seconds and this process's CPU seconds (the
    CPU time is less sensitive to other work on a shared machine)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        wall = cpu = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self._wall, self._cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.wall = time.perf_counter() - self._wall
            self.cpu = time.process_time() - self._cpu

    return Clock()


def _worker(name: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = _records(args)
    out = tempfile.mkdtemp(prefix=f"bench-train-{name}-")
    if name.startswith("rtune"):
        from rtune.train import train
        from rtune.train_config import TrainConfig

        cfg = TrainConfig(model=args.model, output_dir=out, template="vicuna",
                          global_batch_size=args.batch, per_device_batch_size=args.batch,
                          max_length=args.max_length, max_steps=args.steps,
                          packing=name == "rtune-packing", logging_steps=1000,
                          progress_bar=False, save_total_limit=1)
        clock = _clock()
        res = train(records, cfg, callbacks=[clock])
        tokens = res.tokens_seen
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from rtune.models import load_model
        from rtune.templates import render_prompt

        model, tok = load_model(args.model, device="cpu", dtype=torch.float32,
                                for_training=True)
        rows = [{"prompt": render_prompt("vicuna", r.prompt_text, r.system, tokenizer=tok),
                 "completion": " " + r.output} for r in records]
        cfg = SFTConfig(
            output_dir=out, max_length=args.max_length, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=2e-5,
            lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
            completion_only_loss=True, packing=False,
            activation_checkpointing=False, bf16=False, use_cpu=True, seed=42,
            logging_steps=1000, save_strategy="no", report_to="none", disable_tqdm=True,
            include_num_input_tokens_seen="non_padding")
        clock = _clock()
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[clock])
        trainer.train()
        tokens = int(trainer.state.num_input_tokens_seen)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": name, "tokens": tokens, "seconds": clock.wall, "cpu_s": clock.cpu,
            "tokens_per_s": tokens / clock.wall, "tokens_per_cpu_s": tokens / clock.cpu,
            "peak_rss_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="training data file")
    p.add_argument("--model", default="local", help="model spec (default: embedded SmolLM2)")
    p.add_argument("--records", type=int, default=64, help="records taken from the data")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per variant")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (no accumulation)")
    p.add_argument("--max-length", type=int, default=384, help="max tokens per record")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--variants", default="trl,rtune,rtune-packing",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args)))
        return

    from rtune.models import resolve_model

    resolve_model(args.model)  # convert the embedded GGUF once, outside the timings
    rows = []
    for name in args.variants.split(","):
        cmd = [sys.executable, __file__, "--worker", name] + [
            a for a in sys.argv[1:] if a != "--worker"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"  variant {name} failed (output above); left out", file=sys.stderr)
            continue
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"  done {name}", file=sys.stderr)

    print(f"\n{args.records} records of {Path(args.data).name}, model {args.model}, batch "
          f"{args.batch}, max length {args.max_length}, {args.steps} steps, fp32 CPU, "
          f"{args.threads} threads\n")
    base = next((r for r in rows if r["variant"] == "trl"), rows[0])
    print(f"| {'variant':<42} | tokens | seconds | tokens/s | vs TRL | CPU s | tokens/CPU s "
          "| vs TRL (CPU) | peak RSS MB |")
    print(f"|{'-' * 44}|-------:|--------:|---------:|-------:|------:|-------------:|"
          "-------------:|------------:|")
    for r in rows:
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        cpu_ratio = r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
        print(f"| {VARIANTS[r['variant']]:<42} | {r['tokens']:>6} | {r['seconds']:>7.1f} | "
              f"{r['tokens_per_s']:>8.1f} | {ratio:>6.2f} | {r['cpu_s']:>5.0f} | "
              f"{r['tokens_per_cpu_s']:>12.1f} | {cpu_ratio:>12.2f} | {r['peak_rss_mb']:>11.0f} |")


if __name__ == "__main__":
    main()
