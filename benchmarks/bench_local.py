"""Local oracle speed: GGUF first load vs cached load, and greedy tokens/s by batch size.

    python benchmarks/bench_local.py [--threads 2] [--new-tokens 48] [--batches 1,4,8,16]

The first-load figure converts the embedded GGUF into a fresh temporary cache
($RTUNE_CACHE_DIR is pointed there for this process); the cached load reads that copy.
Throughput runs the transformers backend (LocalBackend.generate: left padding, per-row stops)
at each batch size on ~200-token prompts, and llama.cpp one request at a time when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

TOPICS = ["the water cycle", "compound interest", "photosynthesis", "binary search",
          "the French revolution", "plate tectonics", "vaccines", "supply and demand",
          "black holes", "recursion", "the immune system", "climate change", "volcanoes",
          "machine learning", "the printing press", "electric cars"]


def prompt(topic: str) -> list[dict[str, str]]:
    """A reflection-style request of roughly 200 tokens."""
    text = (f"We have an instruction and its answer from an instruction-tuning dataset.\n"
            f"[Instruction]\nExplain {topic} to a high-school student in a short paragraph, "
            f"then give one everyday example and one common misconception about {topic}.\n"
            f"[Answer]\n{topic.capitalize()} is an important idea. It is studied in school and "
            f"it matters in daily life because many things depend on it. People often "
            f"misunderstand {topic}, and a clear example helps. Teachers use pictures and "
            f"stories to explain {topic}, and students remember it better that way.\n"
            "Criteria: complexity, detail, knowledge required, ambiguity, logic. Judge the "
            "instruction against these criteria, then write a better instruction after "
            "[New Instruction] and end with [End].")
    return [{"role": "user", "content": text}]


def bench_transformers(batches: list[int], new_tokens: int) -> dict[int, tuple[float, int]]:
    from rtune.oracle.local import LocalBackend

    backend = LocalBackend("local")
    ids = [backend.prompt_ids(prompt(t)) for t in TOPICS]
    backend.generate(ids[:2], max_new=[4, 4], stops=[None, None])  # warm-up
    results = {}
    for b in batches:
        rows = (ids * (b // len(ids) + 1))[:b]
        started = time.perf_counter()
        outs = backend.generate(rows, max_new=[new_tokens] * b, stops=[None] * b)
        seconds = time.perf_counter() - started
        tokens = sum(o.tokens_out for o in outs)
        results[b] = (tokens / seconds, sum(len(r) for r in rows) // b)
    return results


def bench_llamacpp(new_tokens: int, n: int, threads: int) -> float | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    from rtune.oracle.base import ChatRequest
    from rtune.oracle.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend("local", context_length=2048, n_threads=threads)

    async def go() -> int:
        total = 0
        for t in TOPICS[:n]:
            r = await backend.complete(ChatRequest(prompt(t), model="local",
                                                   max_tokens=new_tokens))
            total += r.tokens_out
        return total

    started = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens / (time.perf_counter() - started)


def bench_loads() -> tuple[float, float]:
    from rtune import models

    with tempfile.TemporaryDirectory(prefix="rtune-bench-cache-") as tmp:
        old = os.environ.get("RTUNE_CACHE_DIR")
        os.environ["RTUNE_CACHE_DIR"] = tmp
        try:
            started = time.perf_counter()
            models.load_model("local")
            first = time.perf_counter() - started
            started = time.perf_counter()
            models.load_model("local")
            cached = time.perf_counter() - started
        finally:
            if old is None:
                del os.environ["RTUNE_CACHE_DIR"]
            else:
                os.environ["RTUNE_CACHE_DIR"] = old
    return first, cached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch and llama.cpp)")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens generated per row")
    ap.add_argument("--batches", default="1,4,8,16", help="batch sizes, comma-separated")
    ap.add_argument("--skip-loads", action="store_true", help="skip the load-time figures")
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else f"cpu ({args.threads} threads)"
    print(f"# rtune local oracle benchmark: SmolLM2-135M-Instruct, {device}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")

    if not args.skip_loads:
        first, cached = bench_loads()
        print("\n| load | seconds |\n|---|---|")
        print(f"| first (GGUF -> safetensors cache) | {first:.1f} |")
        print(f"| cached | {cached:.1f} |")
        print(f"\ncached load is {first / cached:.0f}x faster than the first load")

    batches = [int(b) for b in args.batches.split(",")]
    res = bench_transformers(batches, args.new_tokens)
    base = res[batches[0]][0]
    print(f"\n| backend | batch | prompt tokens | tokens/s | vs batch {batches[0]} |")
    print("|---|---|---|---|---|")
    for b, (tps, plen) in res.items():
        print(f"| transformers greedy | {b} | {plen} | {tps:.1f} | {tps / base:.2f}x |")
    llama = bench_llamacpp(args.new_tokens, 4, args.threads)
    if llama is None:
        print("| llama.cpp | 1 | - | not installed (pip install 'rtune[llamacpp]') | - |")
    else:
        print(f"| llama.cpp | 1 | ~{res[batches[0]][1]} | {llama:.1f} | {llama / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
