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


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_refused_connection_is_named_retried_briefly_then_stops_the_run(tmp_path, transport,
                                                                       monkeypatch):
    import openai

    from rtune.oracle.base import FatalError

    if transport == "httpx":  # the SDK's aiohttp transport reports a refusal as a timeout
        monkeypatch.delattr(openai, "DefaultAioHttpClient", raising=False)
    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = EngineConfig(max_retries=6, timeout=30.0)  # the defaults' minute of backoff
    start = time.monotonic()
    with RunStore(tmp_path) as store:
        eng = Engine(HttpBackend(url), store, cfg)
        with pytest.raises(FatalError, match="nothing listens at .*connection refused, tried 4x"):
            run_one(eng, ask(1))
        assert store.failure_counts() == {"connection_refused": 1}
    assert time.monotonic() - start < 6
    assert eng.stats.retries == 3


def test_auth_error_stops_at_once_and_never_shows_the_key(oracle_server, monkeypatch):
    from rtune.oracle.base import FatalError

    secret = "sk-test-SECRET-1234567890"
    monkeypatch.setenv("ENGINE_KEY", secret)
    oracle_server.script(lambda b: Fault(status=401, echo_headers=True))
    eng = Engine(HttpBackend(oracle_server.url, api_key_env="ENGINE_KEY"), None, EngineConfig())
    with pytest.raises(FatalError) as info:
        run_one(eng, ask(1))
    assert info.value.reason == "auth" and info.value.exit_code == 1
    assert "HTTP 401" in str(info.value) and "$ENGINE_KEY" in str(info.value)
    assert secret not in str(info.value) and len(oracle_server.requests) == 1


def test_server_error_text_is_redacted_before_it_is_kept(oracle_server, tmp_path, monkeypatch):
    """A 500 whose message echoes the request headers: the key in use and any bearer token
    leave the error text before it is raised or stored."""
    secret = "plainkey-0123456789abcdef"  # not sk- shaped: found as the key in use
    monkeypatch.setenv("ENGINE_KEY", secret)
    oracle_server.script(lambda b: Fault(status=500, echo_headers=True))
    with RunStore(tmp_path) as store:
        eng = Engine(HttpBackend(oracle_server.url, api_key_env="ENGINE_KEY"), store,
                     EngineConfig(max_retries=0))
        with pytest.raises(TransientError) as info:
            run_one(eng, ask(1))
        detail = store.db.execute("SELECT detail FROM failures").fetchone()[0]
    assert "request headers" in detail and "Bearer [redacted]" in detail
    assert secret not in detail and secret not in str(info.value)


def test_redact_removes_the_key_and_credential_shapes():
    from rtune.redact import redact

    text = ("key KEY-0123456789 in 'Authorization': 'Bearer abc.def-123456' and "
            "x-api-key: zzzzzzzz99 and sk-proj-AbCdEf012345; a bearer token is fine")
    out = redact(text, ["KEY-0123456789", None, ""])
    assert out == ("key [redacted] in 'Authorization': 'Bearer [redacted]' and "
                   "x-api-key: [redacted] and [redacted]; a bearer token is fine")


@pytest.mark.parametrize("setting", [
    {"concurrency": 0}, {"rpm": -5}, {"tpm": 0}, {"timeout": 0}, {"max_retries": -1}])
def test_settings_that_cannot_work_are_refused(setting):
    from rtune.errors import ConfigError

    flag = "--" + next(iter(setting)).replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} must be"):
        EngineConfig(**setting)
