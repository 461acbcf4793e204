"""LocalBackend: micro-batching, batched == sequential, stop strings, usage, engine + store."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rtune.oracle import Engine  # noqa: E402
from rtune.oracle.base import ChatRequest, PermanentError  # noqa: E402
from rtune.oracle.local import LocalBackend  # noqa: E402
from rtune.store import RunStore  # noqa: E402

PROMPTS = ["What is the capital of France?", "Give three tips", "hi", "x",
           "Write a short poem about the sea and the sky and the blue waves",
           "Explain why the sky is blue.", "A chat between a curious user", "Paris"]


@pytest.fixture(scope="module")
def varied_llama(tiny_llama_path: Path, tmp_path_factory) -> Path:
    """The tiny Llama with large random weights: its greedy output differs from prompt to
    prompt (the default init just repeats one token), so equality checks mean something."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=gen)
    out = tmp_path_factory.mktemp("varied-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_path).save_pretrained(out)
    return out


@pytest.fixture
def backend(varied_llama: Path):
    b = LocalBackend(f"local:{varied_llama}", batch_size=4, max_wait_s=0.2)
    sizes: list[int] = []
    generate = b.generate

    def spy(prompts, **kwargs):
        sizes.append(len(prompts))
        return generate(prompts, **kwargs)

    b.generate = spy  # type: ignore[method-assign]
    b.batch_sizes = sizes  # type: ignore[attr-defined]
    return b


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="m", **kw)


async def _gather(b: LocalBackend, reqs: list[ChatRequest]):
    try:
        return await asyncio.gather(*(b.complete(r) for r in reqs))
    finally:
        await b.aclose()


def test_batched_equals_sequential(backend: LocalBackend):
    reqs = [_req(p, max_tokens=10 + 2 * i) for i, p in enumerate(PROMPTS)]
    batched = asyncio.run(_gather(backend, reqs))
    assert max(backend.batch_sizes) > 1, "concurrent requests were not batched"
    assert len(backend.batch_sizes) < len(reqs)
    backend.batch_sizes.clear()
    sequential = [asyncio.run(_gather(backend, [r]))[0] for r in reqs]
    assert backend.batch_sizes == [1] * len(reqs)
    for r, b, s in zip(reqs, batched, sequential):
        assert b.text == s.text
        assert (b.tokens_in, b.tokens_out, b.finish_reason) == (
            s.tokens_in, s.tokens_out, s.finish_reason)
        assert b.tokens_in == len(backend.prompt_ids(r.messages))
        assert 0 < b.tokens_out <= r.max_tokens
        assert b.model == backend.name == "varied-llama0"
    assert len({r.text for r in batched}) > len(reqs) // 2  # the outputs really differ


def test_batches_are_length_sorted(backend: LocalBackend):
    reqs = [_req(p * k, max_tokens=2) for k, p in zip((1, 9, 2, 8, 3, 7, 1, 9), PROMPTS)]
    seen: list[list[int]] = []
    generate = backend.generate

    def spy(prompts, **kwargs):
        seen.append([len(p) for p in prompts])
        return generate(prompts, **kwargs)

    backend.generate = spy  # type: ignore[method-assign]
    asyncio.run(_gather(backend, reqs))
    flat = [n for batch in seen for n in batch]
    assert len(seen) == 2 and flat == sorted(flat)


def test_usage_max_tokens_and_token_count(backend: LocalBackend):
    [res] = asyncio.run(_gather(backend, [_req("Give three tips", max_tokens=5)]))
    assert (res.tokens_out, res.finish_reason) == (5, "length")
    ids = backend.prompt_ids([{"role": "user", "content": "Give three tips"}])
    assert res.tokens_in == len(ids)
    assert backend.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # template applied
    assert backend.count_tokens("Give three tips") == len(
        backend.tokenizer.encode("Give three tips", add_special_tokens=False))


def test_stop_strings_cut_the_text_and_stop_early(backend: LocalBackend):
    prompt = "What is the capital of France?"
    [full] = asyncio.run(_gather(backend, [_req(prompt, max_tokens=30)]))
    match = re.search(r"[A-Za-z]{2}", full.text[3:])
    assert match, full.text
    stop = match.group(0)
    cut = full.text.find(stop)
    stopped, other = asyncio.run(_gather(backend, [
        _req(prompt, max_tokens=30, stop=("NEVER-THERE", stop)), _req("hi", max_tokens=30)]))
    assert stopped.text == full.text[:cut]
    assert stopped.finish_reason == "stop"
    assert stopped.tokens_out < full.tokens_out
    [alone] = asyncio.run(_gather(backend, [_req("hi", max_tokens=30)]))
    assert other.text == alone.text  # a neighbour's stop string does not touch this row


def test_eos_ends_a_row_with_finish_reason_stop(backend: LocalBackend):
    ids = backend.prompt_ids([{"role": "user", "content": "hi"}])
    [first] = backend.generate([ids], max_new=[3], stops=[None])
    assert first.tokens_out == 3
    backend.batch_sizes.clear()
    # Declare the token greedy decoding picks first an end-of-sequence token.
    eos = [first.token_ids[0], backend.tokenizer.eos_token_id]
    backend.model.generation_config.eos_token_id = eos
    [res] = asyncio.run(_gather(backend, [_req("hi", max_tokens=3)]))
    assert (res.tokens_out, res.finish_reason) == (1, "stop")


def test_sampling_respects_budget(backend: LocalBackend):
    reqs = [_req(p, max_tokens=6, temperature=0.9, top_p=0.9) for p in PROMPTS[:3]]
    reqs.append(_req("hi", max_tokens=6))  # greedy: another batch
    results = asyncio.run(_gather(backend, reqs))
    assert all(0 < r.tokens_out <= 6 for r in results)
    assert sorted(backend.batch_sizes) == [1, 3]


def test_prompt_longer_than_context_is_permanent(backend: LocalBackend):
    backend.context_length = 8
    with pytest.raises(PermanentError, match="context_length"):
        asyncio.run(_gather(backend, [_req("What is the capital of France?")]))


def test_same_request_in_flight_is_computed_once(backend: LocalBackend):
    r = _req("Give three tips", max_tokens=4)
    a, b = asyncio.run(_gather(backend, [r, r]))
    assert a.text == b.text and backend.batch_sizes == [1]


def test_a_failing_batch_fails_its_calls_and_the_next_run_works(backend: LocalBackend):
    def boom(prompts, **kwargs):
        raise RuntimeError("out of memory")

    good = backend.generate
    backend.generate = boom  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="local_generation.*out of memory"):
        asyncio.run(_gather(backend, [_req("hi", max_tokens=2)]))
    backend._plan = lambda jobs: 1 / 0  # type: ignore[method-assign]  # a batcher bug
    with pytest.raises(PermanentError, match="local_batcher"):
        asyncio.run(asyncio.wait_for(_gather(backend, [_req("hi", max_tokens=2)]), 10))
    del backend._plan
    backend.generate = good  # type: ignore[method-assign]
    [res] = asyncio.run(_gather(backend, [_req("hi", max_tokens=2)]))
    assert res.tokens_out == 2


def test_engine_store_and_resume(backend: LocalBackend, tmp_path: Path):
    reqs = [_req(p, max_tokens=6) for p in PROMPTS[:5]]
    with RunStore(tmp_path / "run") as store:
        engine = Engine(backend, store)
        first = sorted(r.text for r in engine.run(engine.complete, reqs))
        assert engine.stats.calls == 5 and engine.stats.cost == 0
    assert max(backend.batch_sizes) > 1
    backend.batch_sizes.clear()
    with RunStore(tmp_path / "run") as store:  # resume: everything comes from the store
        engine = Engine(backend, store)
        again = engine.run(engine.complete, reqs)
        assert sorted(r.text for r in again) == first
        assert all(r.cached for r in again) and engine.stats.calls == 0
    assert backend.batch_sizes == []


def test_queue_wait_behind_local_batches_is_not_a_timeout(backend: LocalBackend, tmp_path: Path):
    """More requests than one batch, a deadline shorter than a batch: every call still
    finishes at the first try (the deadline applies to endpoints, not to a local queue)."""
    import time

    from rtune.oracle import EngineConfig

    generate = backend.generate

    def slow_generate(prompts, **kwargs):  # a batch of a real model on CPU takes minutes
        time.sleep(3.5)
        return generate(prompts, **kwargs)

    backend.generate = slow_generate  # type: ignore[method-assign]
    reqs = [_req(p, max_tokens=12) for p in PROMPTS]
    with RunStore(tmp_path / "run") as store:
        engine = Engine(backend, store, EngineConfig(concurrency=16, timeout=0.001,
                                                     max_retries=0))
        results = engine.run(engine.complete, reqs)
    assert len(results) == len(PROMPTS) and all(r.text is not None for r in results)
    assert engine.stats.calls == len(PROMPTS)
    assert engine.stats.failures == 0 and engine.stats.retries == 0
    assert len(backend.batch_sizes) >= 2  # some requests really waited behind a batch


@pytest.mark.slow
def test_embedded_model_generates():
    b = LocalBackend("local", batch_size=2)
    reqs = [_req("What is the capital of France? Answer in one word.", max_tokens=8),
            _req("Say hello.", max_tokens=8, stop=("\n",))]
    france, hello = asyncio.run(_gather(b, reqs))
    assert b.name == "SmolLM2-135M-Instruct" and b.context_length == 8192
    assert "paris" in france.text.lower()
    assert 0 < france.tokens_out <= 8 and france.tokens_in > 10
    assert hello.text and "\n" not in hello.text
