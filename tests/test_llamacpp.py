"""The optional llama.cpp backend: a crash of the native code is a clear error, never the end of
the test run (llama-cpp-python is compiled for the machine that built it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from rtune.errors import ConfigError

FAKE_CRASHING_BINDING = """
import os, signal

class Llama:
    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGILL)  # what an AMX/AVX-512 binding does on the wrong CPU
"""


def _fake_binding(tmp_path, monkeypatch, source: str) -> None:
    pkg = tmp_path / "fake" / "llama_cpp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source)
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # restored (or removed) afterwards
    del sys.modules["llama_cpp"]


def _gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_missing_binding_says_what_to_install(monkeypatch):
    from rtune.oracle.llamacpp import LlamaCppBackend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails even where installed
    with pytest.raises(ConfigError, match=r"pip install 'rtune\[llamacpp\]'"):
        LlamaCppBackend("local")


def test_a_crashing_binding_is_one_clear_error_naming_the_signal(tmp_path, monkeypatch):
    from rtune.oracle import make_backend

    _fake_binding(tmp_path, monkeypatch, FAKE_CRASHING_BINDING)
    with pytest.raises(ConfigError, match=r"crashed with SIGILL .*CPU.*--oracle local"):
        make_backend(f"llamacpp:{_gguf(tmp_path)}")


def test_cli_reports_the_crash_in_one_line(tmp_path, monkeypatch):
    _fake_binding(tmp_path, monkeypatch, FAKE_CRASHING_BINDING)
    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "Say hi.", "input": "", "output": "Hi."}]')
    proc = subprocess.run(
        [sys.executable, "-m", "rtune", "recycle", str(data), "--run-dir", str(tmp_path / "run"),
         "--oracle", f"llamacpp:{_gguf(tmp_path)}", "--stages", "response"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIGILL" in lines[0] and "Traceback" not in proc.stderr


def test_a_failing_load_names_the_binding_message(tmp_path, monkeypatch):
    from rtune.oracle import make_backend

    _fake_binding(tmp_path, monkeypatch,
                  "class Llama:\n    def __init__(self, *a, **k):\n"
                  "        raise ValueError('bad magic number')\n")
    with pytest.raises(ConfigError, match=r"failed to load model.gguf .*bad magic number"):
        make_backend(f"llamacpp:{_gguf(tmp_path)}")


REAL_RUN = textwrap.dedent("""
    import asyncio
    from rtune.oracle.base import ChatRequest
    from rtune.oracle.llamacpp import LlamaCppBackend

    def req(text, **kw):
        return ChatRequest(messages=({"role": "user", "content": text},), model="m", **kw)

    async def both(b, reqs):
        return await asyncio.gather(*(b.complete(r) for r in reqs))

    b = LlamaCppBackend("local", context_length=1024)
    france, full = asyncio.run(both(b, [
        req("What is the capital of France? Answer in one word.", max_tokens=6),
        req("Count from one to ten.", max_tokens=12)]))
    assert b.context_length == 1024
    assert "paris" in france.text.lower() and 0 < france.tokens_out <= 6
    assert france.tokens_in > 10 and france.model == b.name == "SmolLM2-135M-Instruct.Q4_1"
    stop = full.text.strip()[2:4]
    assert len(stop) == 2, full.text
    [cut] = asyncio.run(both(b, [req("Count from one to ten.", max_tokens=12, stop=(stop,))]))
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"
    assert b.count_tokens("hello world") >= 2
    print("ok")
""")


@pytest.mark.slow
def test_real_binding_generates_when_installed():
    """Runs in a child process: a binding built for another CPU kills the child, not pytest."""
    pytest.importorskip("llama_cpp")
    proc = subprocess.run([sys.executable, "-c", REAL_RUN], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode < 0:
        pytest.skip(f"the installed llama-cpp-python crashed with "
                    f"{signal.Signals(-proc.returncode).name} on this CPU")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
