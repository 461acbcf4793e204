"""rtune run: a recipe end to end (tiny random Llama as student and base model, the loopback
server as oracle and judge), a rerun that does nothing, a changed learning rate, kill -9 in
the middle of training, the dry run, and bad recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oracle_server import default_reply
from rtune.cli import main
from rtune.errors import ConfigError
from rtune.experiment import Experiment
from rtune.recipe import load_recipe

RECORDS = [
    {"instruction": "Give two tips for staying focused.", "input": "",
     "output": "Turn off your phone and take breaks."},
    {"instruction": "What is the boiling point of water?", "input": "",
     "output": "100 degrees Celsius at sea level."},
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, blue, yellow."},
    {"instruction": "Translate the sentence into Spanish.", "input": "Where is the library?",
     "output": "¿Dónde está la biblioteca?"},
    {"instruction": "Explain what a noun is.", "input": "",
     "output": "A noun names a person, place or thing."},
]
QUESTIONS = ["How do I boil an egg?", "Name a colour.", "Why is the sea salty?"]
RECIPE = """\
name: tiny
data: data.json
models:
  oracle: {{spec: "{url}", model: oracle-model}}
  student: {model}
  base_model: {model}
  judge: {{spec: "{url}", model: judge-model}}
test_sets: [questions.jsonl]
arms:
  original: original
  recycled: both
pairs:
  - recycled vs original
recycle:
  concurrency: 4
score:
  max_length: 256
  batch_size: 4
select:
  policy: selective
train:
  max_steps: {steps}
  global_batch_size: 2
  per_device_batch_size: 2
  max_length: 128
  learning_rate: 1e-3
  warmup_ratio: 0.0
  logging_steps: 1
  save_steps: {save_steps}
generate:
  max_tokens: 6
judge:
  allow_empty: true
  resamples: 200
{bench}"""
BENCH = """\
bench:
  tasks: [rtune_exp_mc]
  include_path: tasks
  batch_size: 2
  device: cpu
  bootstrap_iters: 0
"""
JUDGE_MARK = "[The Start of Assistant 1's Answer]"


def scripted(body: dict) -> str:
    """Oracle replies in the marker format; judge replies with a score line."""
    user = body["messages"][-1]["content"]
    if JUDGE_MARK in user:
        return "7 6\nAssistant 1 is a little more helpful."
    return default_reply(body)


def write_recipe(folder: Path, url: str, model: Path, *, steps: int = 2,
                 save_steps: int = 100, bench: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if bench:  # a multiple-choice lm-eval task on a local file
        tasks = folder / "tasks"
        tasks.mkdir(exist_ok=True)
        docs = [{"q": f"What is {i} plus one?", "choices": [str(i + 1), "blue"], "label": 0}
                for i in range(4)]
        (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (tasks / "mc.yaml").write_text(
            f"task: rtune_exp_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {tasks / 'mc.jsonl'}\ntest_split: test\ndoc_to_text: \"{{{{q}}}}\"\n"
            "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\n"
            "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (folder / "data.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    (folder / "questions.jsonl").write_text("".join(
        json.dumps({"question_id": i, "instruction": q}) + "\n"
        for i, q in enumerate(QUESTIONS)), encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(url=url, model=model, steps=steps, save_steps=save_steps,
                                  bench=BENCH if bench else ""), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Tiny models run fastest on one thread, and the CI cores are shared."""
    try:
        import torch
    except ModuleNotFoundError:  # the core-only environment: nothing to set
        yield
        return

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _oracle_requests(server) -> list[dict]:
    return [b for b in server.requests if JUDGE_MARK not in b["messages"][-1]["content"]]


def _has_lm_eval() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def test_end_to_end_rerun_and_changed_learning_rate(oracle_server, tiny_llama_path, tmp_path,
                                                    monkeypatch):
    oracle_server.script(scripted)
    bench = _has_lm_eval()
    if bench:  # the JSON builder's cache goes to tmp_path, not the user's
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    path = write_recipe(tmp_path, oracle_server.url, tiny_llama_path, bench=bench)
    out = tmp_path / "exp"
    lines: list[str] = []
    state = Experiment(load_recipe(path, out=out)).run(echo=lines.append)

    names = ["recycle", "score", "select", "train:original", "train:recycled",
             "generate:original", "generate:recycled", "judge:recycled-vs-original",
             *(["bench:original", "bench:recycled"] if bench else []), "report"]
    assert list(state["steps"]) == names
    assert all(s["status"] == "done" and s["wall_s"] is not None for s in state["steps"].values())
    assert state["runs"][-1]["ran"] == names
    assert len(_oracle_requests(oracle_server)) == 5 * 3  # ins, res, both per record
    judge = state["steps"]["judge:recycled-vs-original"]["summary"]
    assert judge["overall"]["questions"] == 3 and judge["overall"]["win"] == 0  # order-fair
    assert 3 <= judge["calls"]["calls"] <= 6  # identical answers make one request
    train = state["steps"]["train:recycled"]["summary"]
    assert train["steps"] == 2 and len(train["losses"]) == 2 and train["sha256"]
    assert state["recipe"]["resolved"]["train"]["learning_rate"] == 1e-3
    assert state["recipe"]["resolved"]["score"]["template"] == "vicuna"  # a stage default
    assert state["models"]["student"]["sha256"] and state["packages"]["torch"]
    assert state["prompts"]["recycle"]["reflect_instruction"]["version"]
    assert "cpus" in state["hardware"]
    assert (out / "data" / "original.jsonl").is_file() and (out / "data" / "both.jsonl").is_file()
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    for text in ("recycled (A) vs original (B)", "Training loss", "Data statistics",
                 "../judge/recycled-vs-original/results.json", "selective"):
        assert text in page, text
    assert (out / "report" / "records" / "index.html").is_file()
    if bench:
        rows = state["steps"]["bench:original"]["summary"]["rows"]
        assert [(r["task"], r["metric"]) for r in rows] == [("rtune_exp_mc", "acc")]
        assert "Benchmarks" in page and "&Delta; recycled-original" in page
    saved = json.loads((out / "experiment.json").read_text())
    assert saved["steps"]["report"]["status"] == "done"

    # a rerun: nothing to do, no call, no training
    calls = len(oracle_server.requests)
    model_file = out / "models" / "original" / "model.safetensors"
    mtime = model_file.stat().st_mtime_ns
    started = time.perf_counter()
    state = Experiment(load_recipe(path, out=out)).run(echo=lines.append)
    assert time.perf_counter() - started < 5
    assert state["runs"][-1]["ran"] == []
    assert len(oracle_server.requests) == calls
    assert model_file.stat().st_mtime_ns == mtime

    # a new learning rate: train and everything after it, not recycle, score or select
    before = {k: v["finished"] for k, v in state["steps"].items()}
    exp = Experiment(load_recipe(path, out=out, overrides=["train.learning_rate=2e-3"]))
    plan = {r.step.name: (r.status, r.reason) for r in exp.plan()}
    assert plan["recycle"][0] == plan["score"][0] == plan["select"][0] == "done"
    assert plan["train:original"] == ("run", "settings changed: learning_rate")
    assert plan["judge:recycled-vs-original"][0] == "run"
    state = exp.run(echo=lines.append)
    assert state["runs"][-1]["ran"] == names[3:]
    assert all(state["steps"][k]["finished"] == before[k] for k in names[:3])
    assert len(_oracle_requests(oracle_server)) == 15  # no oracle call redone
    assert state["recipe"]["resolved"]["train"]["learning_rate"] == 2e-3
    assert model_file.stat().st_mtime_ns != mtime

    # --from redoes a step and what follows; the dry run says what and costs nothing paid
    exp = Experiment(load_recipe(path, out=out, overrides=["train.learning_rate=2e-3"]))
    plan = {r.step.name: r.status for r in exp.plan("generate:original")}
    assert [k for k, v in plan.items() if v != "done"] == [
        "generate:original", "judge:recycled-vs-original", "report"]


def test_kill_9_during_training_then_rerun_finishes(oracle_server, tiny_llama_path, tmp_path):
    oracle_server.script(scripted)
    path = write_recipe(tmp_path, oracle_server.url, tiny_llama_path, steps=60, save_steps=5)
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "rtune", "run", str(path), "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_file = out / "models" / "original"
    try:
        deadline = time.monotonic() + 180
        while not list(state_file.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((out / "experiment.json").read_text())
    assert state["steps"]["train:original"]["status"] == "running"
    assert not (state_file / "config.json").exists()
    oracle_calls = len(_oracle_requests(oracle_server))

    exp = Experiment(load_recipe(path, out=out))
    plan = {r.step.name: r.status for r in exp.plan()}
    assert plan["recycle"] == plan["score"] == plan["select"] == "done"
    assert plan["train:original"] == "continue"
    state = exp.run(echo=lambda m: None)
    train = state["steps"]["train:original"]["summary"]
    assert train["resumed_from"].startswith("checkpoint-") and train["steps"] == 60
    assert not list(state_file.glob("checkpoint-*"))  # removed once the model is saved
    assert len(_oracle_requests(oracle_server)) == oracle_calls
    assert all(s["status"] == "done" for s in state["steps"].values())


def test_dry_run_plans_and_prices_paid_calls(tmp_path, capsys):
    (tmp_path / "data.json").write_text(json.dumps(RECORDS))
    (tmp_path / "q.jsonl").write_text('{"instruction": "Name a colour."}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: data.json\nmodels:\n  oracle: {spec: 'https://api.example.com/v1', model: "
        "gpt-4o}\n  base_model: /nowhere/llama\narms: {original: original, selected: selected}\n"
        "test_sets: [q.jsonl]\njudge: {max_tokens: 100}\n")
    code = main(["run", str(recipe), "--dry-run", "-o", str(tmp_path / "exp")])
    out = capsys.readouterr().out
    assert code == 0  # the base model is missing: said, and the plan still printed
    assert "train:selected" in out and "judge:selected-vs-original" in out
    assert "recycle" in out and "15 calls" in out and "gpt-4o" in out
    assert "2 calls" in out  # one question, both orders
    assert "missing before a real run:" in out and "/nowhere/llama" in out
    assert not (tmp_path / "exp").exists()


BAD = [
    ("unknown key", "train:\n  learnin_rate: 1e-4\n", 8,
     "train.learnin_rate: unknown key (did you mean learning_rate?)"),
    ("wrong type", "train:\n  max_steps: many\n", 8,
     "train.max_steps: expected an integer, got a string 'many'"),
    ("missing file", "test_sets: [nowhere.jsonl]\n", 6, "test_sets[0]: test set not found"),
    ("unknown arm", "pairs:\n  - [original, recycled]\n", 8,
     "pairs[0]: no arm named 'recycled' (arms: original, selected)"),
    ("set elsewhere", "train:\n  output_dir: x\n", 8,
     "train.output_dir: is set by the experiment"),
    ("duplicate", "arms: {a: original}\n", 7, "arms: duplicate key (first at line 3)"),
]


@pytest.mark.parametrize(("what", "extra", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_recipe_gives_one_line_naming_key_and_line(tmp_path, capsys, what, extra, line,
                                                       message):
    (tmp_path / "data.json").write_text(json.dumps(RECORDS))
    (tmp_path / "q.jsonl").write_text('{"instruction": "Name a colour."}\n')
    recipe = tmp_path / "r.yaml"
    head = "data: data.json\nmodels: {oracle: local}\narms:\n  original: original\n" \
           "  selected: selected\n"
    if what != "missing file":
        head += "test_sets: [q.jsonl]\n"
    recipe.write_text(head + extra)
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe)
    assert str(e.value).startswith(f"{recipe}, line {line}: {message}"), str(e.value)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"line {line}" in err and message in err
