"""The oracle engine over real HTTP against the loopback server, with injected faults."""

import asyncio
import time

import pytest

from oracle_server import Fault
from rtune.oracle import ChatRequest, Engine, EngineConfig, PermanentError, TransientError
from rtune.oracle.http import HttpBackend
from rtune.store import RunStore


def engine_for(server, store=None, **kw):
    cfg = EngineConfig(**{"backoff_base": 0.01, "backoff_max": 2.0, "timeout": 2.0, **kw})
    return Engine(HttpBackend(server.url, timeout=cfg.timeout), store, cfg)


def ask(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], model="m",
                       max_tokens=64)


def run_one(engine, request):
    async def go():
        try:
            return await engine.complete(request, stage="t")
        finally:
            await engine.backend.aclose()
    return asyncio.run(go())


def test_reply_and_usage_come_back(oracle_server):
    oracle_server.script(lambda body: "hello there")
    r = run_one(engine_for(oracle_server), ask(1))
    assert r.text == "hello there" and r.tokens_in == 2 and r.tokens_out == 2
    assert r.finish_reason == "stop"
    assert oracle_server.requests[0]["temperature"] == 0.0


def test_429_with_retry_after_is_honoured(oracle_server):
    oracle_server.script_sequence([Fault(status=429, headers={"Retry-After": "0.5"})],
                                  then=lambda b: "ok")
    eng = engine_for(oracle_server)
    start = time.monotonic()
    r = run_one(eng, ask(1))
    assert r.text == "ok" and len(oracle_server.requests) == 2
    assert time.monotonic() - start >= 0.5
    assert eng.stats.retries == 1


@pytest.mark.parametrize("fault", [
    Fault(status=500), Fault(status=503), Fault(body=b"<html>garbage</html>"),
    Fault(cut=True), Fault(delay=3.0, text="late"), Fault(body=b'{"id": "x", "choices": []}'),
], ids=["500", "503", "garbage", "cut", "timeout", "no-choices"])
def test_transient_faults_are_retried(oracle_server, fault):
    oracle_server.script_sequence([fault], then=lambda b: "recovered")
    r = run_one(engine_for(oracle_server, timeout=1.0), ask(1))
    assert r.text == "recovered"
    assert len(oracle_server.requests) == 2


def test_gives_up_after_max_retries_and_records_the_reason(oracle_server, tmp_path):
    oracle_server.script(lambda b: Fault(status=500))
    with RunStore(tmp_path) as store:
        with pytest.raises(TransientError):
            run_one(engine_for(oracle_server, store, max_retries=2), ask(1))
        assert len(oracle_server.requests) == 3
        assert store.failure_counts() == {"http_500": 1}


def test_bad_request_is_permanent_not_retried(oracle_server, tmp_path):
    oracle_server.script(lambda b: Fault(status=400))
    with RunStore(tmp_path) as store, pytest.raises(PermanentError):
        run_one(engine_for(oracle_server, store), ask(1))
    assert len(oracle_server.requests) == 1


def test_finished_calls_are_never_paid_twice(oracle_server, tmp_path):
    with RunStore(tmp_path) as store:
        eng = engine_for(oracle_server, store)

        async def job(i):
            return (await eng.complete(ask(i % 5), stage="t")).text
        first = eng.run(job, range(20))  # 20 jobs, 5 distinct requests (shared while in flight)
        assert len(first) == 20 and len(oracle_server.requests) == 5
        again = engine_for(oracle_server, store).run(job, range(20))
        assert sorted(again) == sorted(first) and len(oracle_server.requests) == 5
        assert store.call_totals()["calls"] == 5


def test_sliding_window_bounds_concurrency(oracle_server):
    live, peak = [0], [0]
    import threading
    lock = threading.Lock()

    def slow(body):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return "x"
    oracle_server.script(slow)
    eng = engine_for(oracle_server, concurrency=4)

    async def job(i):
        return await eng.complete(ask(i))
    assert len(eng.run(job, range(24))) == 24
    assert peak[0] == 4


def test_rpm_limit_spaces_requests(oracle_server):
    eng = engine_for(oracle_server, rpm=600, concurrency=8)  # 10/s, bucket starts full (600)

    async def job(i):
        return await eng.complete(ask(i))

    async def go():
        eng._limiter.requests.level = 0  # empty bucket: every request waits for its 0.1 s
        return [r async for r in eng.map(job, range(5))]
    start = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - start >= 0.45
