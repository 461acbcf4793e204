"""Student scoring speed: rtune's batched scorer vs the per-record 4-pass loop.

Both run in this process on the same model and records (default: the embedded SmolLM2-135M,
the first 32 records of ../shared/data/cherry_alpaca_5_percent.json, vicuna prompt, max length
2048). The baseline is the authors' method: for every record four unbatched forward passes with
``model(ids, labels=...)`` (answer alone, answer after the prompt, instruction alone,
instruction after the reverse prompt). Prints records/s of each, the speed-up and the largest
difference of IFD / r-IFD between the two.

It then counts the matrix-multiply work of each method (``torch.utils.flop_counter``, in an
untimed second run; attention scores are not counted, they are the same in both) and measures
the machine's fp32 matmul rate on the model's own layer shapes, so the table shows how close each
method runs to the hardware and the most speed-up that less work alone could give.

    python benchmarks/bench_score.py [--n 32] [--batch-size 8] [--threads 2] [--student local]
    python benchmarks/bench_score.py --run runs/quickstart   # a recycled run's candidates
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rtune.models import load_model
from rtune.records import Record
from rtune.score import Scorer
from rtune.score_config import ScoreConfig
from rtune.store import RunStore

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cherry_alpaca_5_percent.json"


def reference(scorer: Scorer, rec: Record) -> dict[str, float]:
    """The per-record loop: the authors' tokenization and four unbatched passes."""
    model, tok, L = scorer.model, scorer.tokenizer, scorer.config.max_length
    dev = scorer.device

    def whole(text: str, max_length: int) -> float:
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        ids = ids.to(dev)
        return model(ids, labels=ids).loss.item()

    def part(text: str, target: str, max_length: int) -> float:
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        ids = ids.to(dev)
        labels = ids.clone()
        labels[0, :len(tok.encode(text[:text.rfind(target)]))] = -100
        return model(ids, labels=labels).loss.item()

    prompt = scorer.prompt(rec.instruction, rec.input)
    reverse = scorer.reverse_prompt(rec.output)
    p_len = len(tok.encode(prompt, truncation=True, max_length=L))
    r_len = len(tok.encode(reverse, truncation=True, max_length=L))
    question = rec.prompt_text
    with torch.no_grad():
        q_direct = whole(question, L - r_len + 1)
        a_direct = whole(rec.output, L - p_len + 1)
        q_cond = part(reverse + question, question, L)
        a_cond = part(prompt + rec.output, rec.output, L)
    return {"ifd_ppl": math.exp(a_cond) / math.exp(a_direct),
            "rifd_ppl": math.exp(q_cond) / math.exp(q_direct),
            "ifd_loss": a_cond / a_direct, "rifd_loss": q_cond / q_direct}


def matmul_gflop(run) -> float:
    """Matrix-multiply work of ``run()`` in GFLOP (linear layers and the output layer)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def matmul_peak(model, device: torch.device, tokens: int = 2048) -> float:
    """GFLOP/s of fp32 matmuls shaped like the model's MLP on ``tokens`` rows (best of 7)."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    a = torch.randn(tokens, cfg.hidden_size, device=device, dtype=dtype)
    b = torch.randn(cfg.hidden_size, cfg.intermediate_size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(7):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * tokens * cfg.hidden_size * cfg.intermediate_size / best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=32, help="records")
    ap.add_argument("--run", help="score the candidates of this run (orig/ins/res/both share "
                    "sequences, which rtune runs once) instead of --data")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--student", default="local")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--skip-flops", action="store_true",
                    help="leave out the untimed second run that counts matmul work")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        with RunStore(args.run, create=False) as store:
            records = list(store.candidates())[:args.n]
        source = f"candidates of the run {args.run}"
    else:
        items = json.loads(Path(args.data).read_text(encoding="utf-8"))[:args.n]
        records = [Record(instruction=d["instruction"], input=d.get("input", ""),
                          output=d["output"], source_index=i) for i, d in enumerate(items)]
        source = f"records of {Path(args.data).name}"
    model, tok = load_model(args.student, device=args.device)
    config = ScoreConfig(student=args.student, batch_size=args.batch_size,
                         max_length=args.max_length, device=args.device)
    Scorer(config, model, tok).score(records[:2])  # warm-up (first-call allocations)
    # a fresh scorer for each run: a scorer does not run a sequence it has run before
    scorer = Scorer(config, model, tok)
    reference(scorer, records[0])
    peaks = [matmul_peak(model, scorer.device)]

    started, cpu = time.perf_counter(), time.process_time()
    ref = []
    for r in records:
        ref.append(reference(scorer, r))
        print(f"\rbaseline {len(ref)}/{len(records)}", end="", file=sys.stderr, flush=True)
    t_ref, c_ref = time.perf_counter() - started, time.process_time() - cpu
    print(f" {t_ref:.1f} s", file=sys.stderr)
    peaks.append(matmul_peak(model, scorer.device))

    started, cpu = time.perf_counter(), time.process_time()
    ours: dict[int, dict] = {}
    for chunk in scorer.iter_chunks(records):
        ours.update(chunk)
        print(f"\rrtune {len(ours)}/{len(records)}", end="", file=sys.stderr, flush=True)
    t_ours, c_ours = time.perf_counter() - started, time.process_time() - cpu
    print(f" {t_ours:.1f} s", file=sys.stderr)
    peaks.append(matmul_peak(model, scorer.device))

    diffs = {k: max(abs(ours[i][k] - ref[i][k]) for i in range(len(records))
                    if ours[i][k] is not None)
             for k in ("ifd_ppl", "rifd_ppl", "ifd_loss", "rifd_loss")}
    for i in ours:
        if ours[i]["reason"]:
            print(f"record {i}: {ours[i]['reason']} (baseline: {ref[i]})", file=sys.stderr)
    truncated = sum(bool(ours[i]["truncated"]) for i in ours)
    n = len(records)
    device = str(scorer.device) + (f", {args.threads} threads" if scorer.device.type == "cpu"
                                   else f", {torch.cuda.get_device_name()}")
    print(f"student {scorer.student_name} ({next(model.parameters()).dtype}, {device}); "
          f"{n} {source}; max length {args.max_length}; "
          f"{truncated} truncated")
    print(f"{'method':34s} {'seconds':>8s} {'records/s':>10s} {'CPU s':>8s} "
          f"{'records/CPU s':>14s}")
    print(f"{'per-record 4-pass loop (baseline)':34s} {t_ref:8.2f} {n / t_ref:10.3f} "
          f"{c_ref:8.1f} {n / c_ref:14.4f}")
    print(f"{f'rtune batched (batch {args.batch_size})':34s} {t_ours:8.2f} {n / t_ours:10.3f} "
          f"{c_ours:8.1f} {n / c_ours:14.4f}")
    print(f"speed-up x{t_ref / t_ours:.2f} (wall clock), x{c_ref / c_ours:.2f} (CPU time of "
          "this process: steadier on a shared machine)")
    print("max |difference|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if args.skip_flops:
        return 0

    print("counting matmul work (untimed) ...", file=sys.stderr)
    with torch.no_grad():
        g_ref = matmul_gflop(lambda: [reference(scorer, r) for r in records])
    g_ours = matmul_gflop(lambda: list(Scorer(config, model, tok).iter_chunks(records)))
    peak = max(peaks)  # a shared machine's speed varies: the best seen before/between/after
    print(f"{'method':34s} {'matmul GFLOP':>12s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, g, t in (("per-record 4-pass loop (baseline)", g_ref, t_ref),
                       (f"rtune batched (batch {args.batch_size})", g_ours, t_ours)):
        print(f"{name:34s} {g:12.1f} {g / t:8.1f} {g / t / peak:8.2f}")
    print(f"matmul peak of this machine (fp32, model's MLP shape, 2048 rows, best of 21 "
          f"around the runs): {peak:.1f} GFLOP/s")
    print(f"work ratio x{g_ref / g_ours:.2f}: the speed-up that less work gives at equal "
          "efficiency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
