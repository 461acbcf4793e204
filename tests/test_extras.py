"""The core install has no torch: every command that needs an extra says which, in one line.

Runs in both environments: where the extras are installed, the child process blocks their
imports (``sys.modules[name] = None`` makes ``import name`` fail), as on a core-only install.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from rtune.extras import EXTRAS, MissingExtra, require

BLOCKED = ("torch", "transformers", "accelerate", "gguf", "safetensors", "peft", "datasets",
           "pyarrow", "matplotlib", "lm_eval", "llama_cpp")
CHILD = ("import sys\n"
         f"for name in {BLOCKED!r}:\n"
         "    sys.modules[name] = None\n"
         "from rtune.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def rtune_without_extras(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"instruction": "Say hi.", "input": "", "output": "Hi."}]')
    return path


@pytest.mark.parametrize("args, extra", [
    (["score", "{data}"], "local"),
    (["train", "{data}", "-o", "{tmp}/model"], "train"),
    (["recycle", "{data}", "--run-dir", "{tmp}/run", "--stages", "response"], "local"),
    (["generate", "local", "--test-set", "{data}", "-o", "{tmp}/answers.jsonl"], "local"),
    (["report", "{data}", "-o", "{tmp}/report"], "report"),
    (["judge", "{data}", "--vs", "{data}", "--judge", "local", "-o", "{tmp}/judged"], "local"),
    (["bench", "local", "--tasks", "gsm8k"], "bench"),
    (["recycle", "{data}", "--run-dir", "{tmp}/run", "--oracle", "llamacpp"], "llamacpp"),
])
def test_a_command_needing_an_extra_says_so_in_one_line(tmp_path, data, args, extra):
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    proc = rtune_without_extras(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"pip install 'rtune[{extra}]'" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()


def test_help_and_version_stay_torch_free(tmp_path):
    check = ("import sys\nfrom rtune.cli import build_parser\nbuild_parser()\n"
             "heavy = [m for m in ('torch', 'transformers', 'numpy', 'matplotlib') "
             "if m in sys.modules]\nprint(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr
    version = rtune_without_extras("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("rtune ")


def test_the_verbs_are_the_stage_modules_made_callable():
    check = ("import sys, rtune\n"
             "from rtune.recycle import RecycleConfig\n"  # a stage module imported first
             "import rtune.judge as judge_module\n"
             "assert rtune.recycle.RecycleConfig is RecycleConfig and judge_module is rtune.judge\n"
             "assert all(callable(getattr(rtune, v)) for v in rtune.VERBS)\n"
             "assert rtune.select.select is sys.modules['rtune.select'].select\n"
             "print([m for m in ('torch', 'transformers', 'numpy', 'matplotlib') "
             "if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_require_names_the_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtra, match=r"rtune train needs the training extra: "
                       r"pip install 'rtune\[train\]' \((torch|peft) is not installed\)"):
        require("train", "rtune train")
    assert set(EXTRAS) >= {"local", "train", "report", "data", "bench", "llamacpp"}
