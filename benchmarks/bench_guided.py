"""Guided output with the embedded SmolLM2-135M-Instruct: parse success and speed, guided vs
unguided, for the recycling stages and for the pairwise judge.

Recycling: the first ``--records`` records of the Cherry Alpaca sample, stages instruction,
response and both, first replies only (no re-ask), greedy. Both modes share one loaded model
and run in alternating chunks of ``--chunk`` records (so a machine whose load changes affects
both alike); tokens/s is the oracle's output tokens over the wall time of the chunk's run.
Judge: ``--questions`` Vicuna questions, answers from the same model (side A) against their
first sentence (side B), each pair judged in both orders; a reply is readable when its score
line parses (first reply, no re-ask). ``--engines`` also times llguidance against xgrammar
(when importable) on the same regex, inside the same batched generation.

    python benchmarks/bench_guided.py                       # 40 records, 20 questions
    python benchmarks/bench_guided.py --records 16 --questions 10 --max-tokens 192
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from rtune.judge import judge  # noqa: E402
from rtune.judge_parse import parse_scores  # noqa: E402
from rtune.oracle.local import LocalBackend  # noqa: E402
from rtune.recycle import recycle  # noqa: E402
from rtune.recycle_config import RecycleConfig  # noqa: E402
from rtune.store import RunStore  # noqa: E402
from rtune.testsets import load_test_set  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
STAGES = ("instruction", "response", "both")
KINDS = {"instruction": "ins", "response": "res", "both": "both"}
MODES = ("off", "auto")


def recycle_part(backend: LocalBackend, data: Path, args: argparse.Namespace,
                 tmp: Path) -> dict[str, Any]:
    rows = json.loads(data.read_text())[: args.records]
    src = tmp / "records.json"
    src.write_text(json.dumps(rows))
    wall = dict.fromkeys(MODES, 0.0)
    for start in range(0, len(rows), args.chunk):
        end = min(start + args.chunk, len(rows))
        order = MODES if (start // args.chunk) % 2 == 0 else MODES[::-1]
        for mode in order:
            config = RecycleConfig(oracle="local", stages=STAGES, max_tokens=args.max_tokens,
                                   reask=0, guided=mode, batch_size=args.batch_size,
                                   concurrency=2 * args.batch_size, limit=end, progress=False)
            t = time.perf_counter()
            recycle(src, tmp / mode, config, backend=backend)
            wall[mode] += time.perf_counter() - t
        print(f"  records {end}/{len(rows)}: off {wall['off']:.0f} s, "
              f"guided {wall['auto']:.0f} s", flush=True)
    out: dict[str, Any] = {}
    for mode in MODES:
        with RunStore(tmp / mode) as store:
            calls = store.call_totals()
            stages = {}
            for stage in STAGES:
                cands = list(store.candidates(KINDS[stage]))
                stages[stage] = {"n": len(cands),
                                 "ok": sum(c.parse_status == "ok" for c in cands),
                                 "cut": sum(bool(c.extra.get("cut")) for c in cands)}
        out[mode] = {"stages": stages, "tokens_out": calls["tokens_out"], "wall": wall[mode],
                     "tok_s": calls["tokens_out"] / wall[mode]}
    return out


def judge_part(backend: LocalBackend, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    questions = load_test_set(DATA / "vicuna_test_set.jsonl")[: args.questions]
    prompts = [backend.prompt_ids([{"role": "user", "content": q.instruction}])
               for q in questions]
    answers = []
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i:i + args.batch_size]
        answers += [o.text.strip() for o in backend.generate(
            batch, max_new=[args.answer_tokens] * len(batch), stops=[None] * len(batch))]
    sides = []
    for side in ("a", "b"):
        path = tmp / f"{side}.jsonl"
        with open(path, "w") as f:
            for q, a in zip(questions, answers):
                text = a if side == "a" else (re.split(r"(?<=[.!?])\s", a)[0] or a)
                f.write(json.dumps({"question_id": q.id, "test_set": q.test_set,
                                    "instruction": q.instruction, "output": text or "-"}) + "\n")
        sides.append(path)
    out = {}
    for mode in MODES:
        t = time.perf_counter()
        judge([sides[0]], [sides[1]], judge_spec="local", run_dir=tmp / f"judge-{mode}",
              max_tokens=args.judge_tokens, resamples=100, guided=mode)
        wall = time.perf_counter() - t
        with RunStore(tmp / f"judge-{mode}") as store:
            replies = [j["raw"] for _, j in store.items("judgments") if "raw" in j]
        out[mode] = {"replies": len(replies), "wall": wall,
                     "readable": sum(parse_scores(r) is not None for r in replies)}
    return out


def engines_part(backend: LocalBackend, args: argparse.Namespace) -> list[tuple]:
    """llguidance vs xgrammar: the response shape as a regex, the same batched generation."""
    from rtune.guided import GuidedSpec, stage_shape
    from rtune.guided_forms import regex
    from rtune.oracle.guided_local import LocalGuide

    shape = stage_shape("response")
    prompt = backend.prompt_ids([{"role": "user", "content": "Give three tips for sleeping "
                                  "well. Critique the answer 'Sleep.', then write a better "
                                  "answer between [Better Answer] and [End]."}])
    batch = [prompt] * args.batch_size
    rows = []
    t = time.perf_counter()
    backend.generate(batch, max_new=[args.max_tokens] * len(batch), stops=[None] * len(batch))
    plain = time.perf_counter() - t
    rows.append(("unguided", 0.0, plain))
    guide = LocalGuide(backend.tokenizer, [backend.tokenizer.eos_token_id])
    spec = GuidedSpec(shape, "regex")
    t = time.perf_counter()
    guide.grammar(spec)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    backend._guide = guide
    backend.generate(batch, max_new=[args.max_tokens] * len(batch), stops=[None] * len(batch),
                     guided=[spec] * len(batch))
    rows.append(("llguidance", compile_s, time.perf_counter() - t))
    try:
        import xgrammar as xgr
    except ImportError:
        rows.append(("xgrammar (not installed)", None, None))
        return rows
    from transformers import LogitsProcessorList

    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer,
                                              vocab_size=backend.model.config.vocab_size)
    compiled = xgr.GrammarCompiler(info).compile_regex(regex(shape))
    compile_s = time.perf_counter() - t
    processor = _XgrProcessor(xgr, compiled, len(batch), len(prompt),
                              backend.model.config.vocab_size)
    t = time.perf_counter()
    _generate_with(backend, batch, LogitsProcessorList([processor]), args.max_tokens)
    rows.append(("xgrammar", compile_s, time.perf_counter() - t))
    return rows


class _XgrProcessor:
    def __init__(self, xgr: Any, compiled: Any, n: int, width: int, vocab: int):
        self.xgr, self.width, self.vocab = xgr, width, vocab
        self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(n)]
        self.bitmask = xgr.allocate_token_bitmask(n, vocab)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.width:
            for m, t in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_terminated():
                    m.accept_token(t)
        for i, m in enumerate(self.matchers):
            m.fill_next_token_bitmask(self.bitmask, i)
        self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores


def _generate_with(backend: LocalBackend, batch: list[list[int]], processors: Any,
                   max_new: int) -> None:
    import torch

    pad = backend.tokenizer.pad_token_id
    ids = torch.tensor(batch)
    with torch.inference_mode():
        backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                               logits_processor=processors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "cherry_alpaca_5_percent.json")
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--judge-tokens", type=int, default=64)
    ap.add_argument("--engines", action="store_true", help="also llguidance vs xgrammar")
    ap.add_argument("--skip-recycle", action="store_true")
    ap.add_argument("--skip-judge", action="store_true")
    args = ap.parse_args()
    backend = LocalBackend("local", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.engines:
            print(f"{'engine':<26} {'compile s':>9} {'generate s':>10}")
            for name, comp, gen in engines_part(backend, args):
                print(f"{name:<26} {'-' if comp is None else f'{comp:.2f}':>9} "
                      f"{'-' if gen is None else f'{gen:.1f}':>10}")
        if not args.skip_recycle:
            res = recycle_part(backend, args.data, args, Path(tmp))
            print(f"recycling, {args.records} records, max_tokens {args.max_tokens}, "
                  f"batch {args.batch_size}, greedy, no re-ask")
            print(f"{'stage':<12} {'unguided ok':>12} {'guided ok':>10} {'guided cut':>10}")
            for stage in STAGES:
                off, on = res["off"]["stages"][stage], res["auto"]["stages"][stage]
                print(f"{stage:<12} {off['ok']:>5}/{off['n']:<6} {on['ok']:>4}/{on['n']:<5} "
                      f"{on['cut']:>10}")
            for mode in MODES:
                r = res[mode]
                print(f"{'guided' if mode == 'auto' else 'unguided':<9} {r['tokens_out']:>7} "
                      f"tokens out in {r['wall']:.0f} s: {r['tok_s']:.1f} tok/s")
            print(f"guided / unguided tokens/s: {res['auto']['tok_s'] / res['off']['tok_s']:.2f}")
        if not args.skip_judge:
            res = judge_part(backend, args, Path(tmp))
            for mode in MODES:
                r = res[mode]
                print(f"judge {'guided' if mode == 'auto' else 'unguided':<9} readable "
                      f"{r['readable']}/{r['replies']} ({r['wall']:.0f} s)")


if __name__ == "__main__":
    main()
