"""Guided output with the embedded SmolLM2-135M-Instruct: parse success and speed, guided vs
unguided, for the recycling stages and for the pairwise judge.

Recycling: the first ``--records`` records of the Cherry Alpaca sample, stages instruction,
response and both, first replies only (no re-ask), greedy; guided replies with the default loop
guard (``--loop-guard 64``; "looped": replies with a repeating text it ended). Both modes share one loaded model
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
    cpu = dict.fromkeys(MODES, 0.0)
    for start in range(0, len(rows), args.chunk):
        end = min(start + args.chunk, len(rows))
        order = MODES if (start // args.chunk) % 2 == 0 else MODES[::-1]
        for mode in order:
            config = RecycleConfig(oracle="local", stages=STAGES, max_tokens=args.max_tokens,
                                   reask=0, guided=mode, batch_size=args.batch_size,
                                   concurrency=2 * args.batch_size, limit=end, progress=False)
            t, c = time.perf_counter(), time.process_time()
            recycle(src, tmp / mode, config, backend=backend)
            wall[mode] += time.perf_counter() - t
            cpu[mode] += time.process_time() - c
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
                                 "cut": sum(bool(c.extra.get("cut")) for c in cands),
                                 "ok_done": sum(c.parse_status == "ok" and not c.extra.get("cut")
                                                for c in cands),
                                 "looped": sum(bool(c.extra.get("looped")) for c in cands)}
        out[mode] = {"stages": stages, "tokens_out": calls["tokens_out"], "wall": wall[mode],
                     "tok_s": calls["tokens_out"] / wall[mode],
                     "tok_cpu_s": calls["tokens_out"] / cpu[mode]}
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


REPLY = ("Critique: the answer is not helpful: it repeats the goal instead of giving a tip, "
         "and it has no detail.\n\n[Better Answer] " + " ".join(
             f"Tip {i}: keep a regular schedule, go to bed at the same time every day (even on "
             f"weekends), and avoid screens for an hour before sleep." for i in range(1, 9))
         + " [End]")


def engines_part(args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    """llguidance vs xgrammar on the embedded model's tokenizer: each engine masks a batch of
    rows replaying the same ~300-token response-stage reply, one token at a time, and the mask
    is applied to a batch of logits (what a logits processor does each step), twice: cold (a
    new grammar) and warm (the next batch). The model's own compute is left out: on a shared
    CPU it varies far more than the engines differ."""
    import torch

    from rtune.guided import GuidedSpec, stage_shape
    from rtune.guided_forms import regex
    from rtune.models import load_tokenizer
    from rtune.oracle.guided_local import LocalGuide

    tok = load_tokenizer("local")
    ids = tok.encode(REPLY, add_special_tokens=False)
    n, vocab = args.batch_size, len(tok)
    shape = stage_shape("response", ("your better answer", "your answer here"))
    rows = []
    guide = LocalGuide(tok, [tok.eos_token_id])
    for mode, label in (("regex", "llguidance, regex form"), ("auto", "llguidance, own form")):
        spec = GuidedSpec(shape, mode)
        t = time.perf_counter()
        guide.grammar(spec)
        compile_s = time.perf_counter() - t
        times = []
        for _ in range(2):
            proc = guide.processor([spec] * n, 0, [None] * n)
            times.append(_replay(proc, ids, n, vocab))
            assert not proc.errors and all(m.is_accepting() for m in proc.matchers)
            proc.finish()
        rows.append((label, compile_s, *times))
    try:
        import xgrammar as xgr
    except ImportError:
        rows.append(("xgrammar (not installed)", float("nan"), float("nan"), float("nan")))
        return rows
    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiled = xgr.GrammarCompiler(info).compile_regex(regex(shape))
    compile_s = time.perf_counter() - t
    bitmask = xgr.allocate_token_bitmask(n, vocab)
    times = []
    for _ in range(2):
        matchers = [xgr.GrammarMatcher(compiled) for _ in range(n)]

        def xgr_step(input_ids: torch.Tensor, scores: torch.Tensor,
                     matchers: list[Any] = matchers) -> torch.Tensor:
            if input_ids.shape[1]:
                for m, token in zip(matchers, input_ids[:, -1].tolist()):
                    m.accept_token(token)
            for i, m in enumerate(matchers):
                m.fill_next_token_bitmask(bitmask, i)
            xgr.apply_token_bitmask_inplace(scores, bitmask)
            return scores

        times.append(_replay(xgr_step, ids, n, vocab))
        assert all(m.accept_token(tok.eos_token_id) for m in matchers)
    rows.append(("xgrammar, regex form", compile_s, *times))
    return rows


def _replay(step: Any, ids: list[int], n: int, vocab: int) -> float:
    """Milliseconds per token of ``step`` over ``ids`` for ``n`` rows (the first step included)."""
    import torch

    scores = torch.zeros((n, vocab))
    t = time.perf_counter()
    for k in range(len(ids) + 1):
        step(torch.tensor([ids[:k]] * n, dtype=torch.long).reshape(n, k), scores.clone())
    return (time.perf_counter() - t) * 1000 / (len(ids) + 1)


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
    need_model = not (args.skip_recycle and args.skip_judge)
    backend = LocalBackend("local", batch_size=args.batch_size) if need_model else None
    with tempfile.TemporaryDirectory() as tmp:
        if args.engines:
            print(f"engines, batch {args.batch_size}: {'compile s':>9} {'cold ms/token':>14} "
                  f"{'warm ms/token':>14}")
            for name, comp, cold, warm in engines_part(args):
                print(f"{name:<26} {comp:>9.3f} {cold:>14.2f} {warm:>14.2f}")
        if backend is not None and not args.skip_recycle:
            res = recycle_part(backend, args.data, args, Path(tmp))
            print(f"recycling, {args.records} records, max_tokens {args.max_tokens}, "
                  f"batch {args.batch_size}, greedy, no re-ask")
            print(f"{'stage':<12} {'unguided ok':>12} {'(complete)':>10} {'guided ok':>10} "
                  f"{'(complete)':>10} {'guided looped':>14} {'guided cut':>11}")
            for stage in STAGES:
                off, on = res["off"]["stages"][stage], res["auto"]["stages"][stage]
                print(f"{stage:<12} {off['ok']:>5}/{off['n']:<6} "
                      f"{off['ok_done']:>4}/{off['n'] - off['cut']:<5} "
                      f"{on['ok']:>4}/{on['n']:<5} {on['ok_done']:>4}/{on['n'] - on['cut']:<5} "
                      f"{on['looped']:>14} {on['cut']:>11}")
            for mode in MODES:
                r = res[mode]
                print(f"{'guided' if mode == 'auto' else 'unguided':<9} {r['tokens_out']:>7} "
                      f"tokens out in {r['wall']:.0f} s: {r['tok_s']:.1f} tok/s, "
                      f"{r['tok_cpu_s']:.1f} per CPU-second")
            print(f"guided / unguided tokens/s: {res['auto']['tok_s'] / res['off']['tok_s']:.2f} "
                  f"(wall), {res['auto']['tok_cpu_s'] / res['off']['tok_cpu_s']:.2f} (CPU)")
        if backend is not None and not args.skip_judge:
            res = judge_part(backend, args, Path(tmp))
            for mode in MODES:
                r = res[mode]
                print(f"judge {'guided' if mode == 'auto' else 'unguided':<9} readable "
                      f"{r['readable']}/{r['replies']} ({r['wall']:.0f} s)")


if __name__ == "__main__":
    main()
