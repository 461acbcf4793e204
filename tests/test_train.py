"""rtune train on a tiny random Llama (CPU): loss, saved model, resume, errors, packing."""

from __future__ import annotations

import json

import pytest

from rtune.errors import ConfigError, InputError
from rtune.records import Record
from rtune.templates import chat_template, render_prompt
from rtune.train import SUMMARY_FILE, prepare_dataset, train
from rtune.train_config import TrainConfig

RECORDS = [
    Record(instruction="What is the capital of France?", output="Paris.", source_index=0),
    Record(instruction="Give three tips for staying healthy.",
           output="Eat well, exercise and sleep.", source_index=1),
    Record(instruction="Write a short poem about the sea.", output="The sea is wide and blue.",
           source_index=2),
    Record(instruction="Explain why the sky is blue.", output="Blue light scatters most.",
           source_index=3),
    Record(instruction="Chat", output="", source_index=4, messages=[
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the sea?"},
        {"role": "assistant", "content": "It is wide and blue."}]),
    Record(instruction="Say hi.", output="Hi there, hello.", source_index=5),
]


@pytest.fixture(autouse=True)
def _one_thread():
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


def _config(model, out, **kw) -> TrainConfig:
    base = dict(model=str(model), output_dir=str(out), template="vicuna", global_batch_size=2,
                per_device_batch_size=2, max_length=256, learning_rate=2e-3, warmup_ratio=0.0,
                logging_steps=1, progress_bar=False, save_total_limit=None)
    base.update(kw)
    return TrainConfig(**base)


def _mean_loss(folder, template, records) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    features, _ = prepare_dataset(records, template, tok, 256)
    losses = []
    with torch.no_grad():
        for f in features:
            out = model(input_ids=torch.tensor([f["input_ids"]]),
                        labels=torch.tensor([f["labels"]]))
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def test_batch_plan_and_errors_before_compute(tiny_llama_path, tmp_path):
    plan = TrainConfig().batch_plan()
    assert (plan.global_batch_size, plan.per_device_batch_size,
            plan.gradient_accumulation_steps, plan.world_size) == (128, 4, 32, 1)
    assert "4 per device x 32 gradient accumulation x 1" in plan.describe()
    assert TrainConfig(world_size=8).batch_plan().gradient_accumulation_steps == 4
    defaults = TrainConfig()
    assert (defaults.learning_rate, defaults.weight_decay, defaults.warmup_ratio,
            defaults.lr_scheduler_type, defaults.epochs, defaults.max_length,
            defaults.template) == (2e-5, 0.0, 0.03, "cosine", 3.0, 2048, "vicuna")

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="not a multiple"):
        train(RECORDS, _config(tiny_llama_path, out, global_batch_size=6,
                               per_device_batch_size=4))
    with pytest.raises(ConfigError, match="not a multiple"):
        train(RECORDS, _config(tiny_llama_path, out, global_batch_size=4, world_size=3))
    with pytest.raises(ConfigError, match="unknown template"):
        train(RECORDS, _config(tiny_llama_path, out, template="nope"))
    with pytest.raises(ConfigError, match="not found"):
        train(RECORDS, _config(tmp_path / "missing-model", out))
    with pytest.raises(ConfigError, match="special tokens"):
        train(RECORDS, _config(tiny_llama_path, out, template="llama3"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        train(empty, _config(tiny_llama_path, out))
    with pytest.raises(ConfigError, match="max-length"):
        train(RECORDS, _config(tiny_llama_path, out, max_length=8))
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="qlora"):  # bitsandbytes / CUDA missing
            train(RECORDS, _config(tiny_llama_path, out, qlora=True))
    assert not out.exists()  # nothing was computed or written


def test_train_loss_drops_then_reload_and_generate(tiny_llama_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    before = _mean_loss(tiny_llama_path, "vicuna", RECORDS)
    result = train(RECORDS, _config(tiny_llama_path, out, max_steps=20, max_length=120))
    after = _mean_loss(out, "vicuna", RECORDS)
    assert result.steps == 20 and len(result.losses) == 20
    assert after < before * 0.8, (before, after)
    assert result.data.used == 6 and result.data.dropped == []
    assert result.data.truncated  # the multi-turn record is longer than 120 tokens
    assert result.tokens_seen > 0 and result.plan.gradient_accumulation_steps == 1

    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["settings"]["learning_rate"] == 2e-3 and summary["steps"] == 20
    assert summary["data"]["truncated"] == result.data.truncated

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == chat_template("vicuna")
    prompt = render_prompt("auto", "Say hi.", tokenizer=tok)
    assert prompt == render_prompt("vicuna", "Say hi.", tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert model.generation_config.eos_token_id == tok.eos_token_id


class _Stop(Exception):
    pass


def test_resume_gives_same_steps_and_optimizer_state(tiny_llama_path, tmp_path):
    import torch
    from transformers import TrainerCallback

    class StopAt4(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                raise _Stop

    kw = dict(max_steps=6, save_steps=3, max_length=120)
    full = train(RECORDS, _config(tiny_llama_path, tmp_path / "a", **kw))
    with pytest.raises(_Stop):
        train(RECORDS, _config(tiny_llama_path, tmp_path / "b", **kw), callbacks=[StopAt4()])
    assert (tmp_path / "b" / "checkpoint-3").is_dir()
    assert not (tmp_path / "b" / "checkpoint-6").exists()
    resumed = train(RECORDS, _config(tiny_llama_path, tmp_path / "b", resume=True, **kw))
    assert resumed.resumed_from.endswith("checkpoint-3")
    assert resumed.steps == full.steps == 6

    def opt(folder):
        return torch.load(folder / "checkpoint-6" / "optimizer.pt", weights_only=False)

    a, b = opt(tmp_path / "a"), opt(tmp_path / "b")
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for key in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.allclose(a["state"][key][name], b["state"][key][name], atol=1e-6), name
    assert full.losses[3:] == pytest.approx(resumed.losses[-3:], rel=1e-4)


def test_packing_loss_equals_padded_loss(tiny_llama_path):
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
    )

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    features, _ = prepare_dataset(RECORDS[:4], "chatml", tok, 256)
    padded = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(features)
    flat = DataCollatorWithFlattening(separator_id=-100)(
        [{k: f[k] for k in ("input_ids", "labels")} for f in features])
    assert flat["input_ids"].shape[0] == 1
    with torch.no_grad():
        a = model(**padded, use_cache=False).loss
        b = model(**flat, use_cache=False).loss  # packed rows are detected without a cache
    assert torch.allclose(a, b, atol=1e-5)  # attention never crosses packed records


def test_cli_packing_lora_json(tiny_llama_path, tmp_path, capsys):
    from rtune.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r.to_alpaca()) + "\n" for r in RECORDS[:4]))
    out = tmp_path / "m"
    rc = main(["train", str(data), "--model", str(tiny_llama_path), "--template", "chatml",
               "-o", str(out), "--max-steps", "2", "--global-batch-size", "4",
               "--per-device-batch-size", "2", "--max-length", "128", "--packing", "--lora",
               "--gradient-checkpointing",
               "--lora-r", "4", "--lora-alpha", "8", "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    result = json.loads(captured.out)  # stdout holds the JSON alone (Trainer logs: stderr)
    assert result["steps"] == 2 and result["plan"]["gradient_accumulation_steps"] == 2
    assert "4 = 2 per device x 2 gradient accumulation" in captured.err
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "model.safetensors").is_file()  # merged weights load without peft
    rc = main(["train", str(data), "--model", str(tiny_llama_path), "-o", str(out),
               "--global-batch-size", "6", "--per-device-batch-size", "4"])
    assert rc == 2 and "not a multiple" in capsys.readouterr().err


def test_hub_id_resolves_from_the_local_cache_only(tiny_llama_path, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    from rtune.models import resolve_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="never downloads"):
        resolve_model("some-org/tiny-llama")
    repo = tmp_path / "models--some-org--tiny-llama"
    shutil.copytree(tiny_llama_path, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert resolve_model("some-org/tiny-llama") == repo / "snapshots" / "abc123"


@pytest.mark.local  # without the training extra, train stops at the extra hint first
def test_max_steps_zero_is_refused_before_anything_loads(tmp_path, capsys):
    """--max-steps 0 announced the epochs' step count and trained one step."""
    from rtune.cli import main

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    out = tmp_path / "never"
    for steps in ("0", "-2"):
        rc = main(["train", str(data), "--model", str(tmp_path / "no-model"), "--max-steps",
                   steps, "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"rtune train: error: --max-steps must be at least 1 (got "
                                   f"{steps}); leave it out to train for --epochs"]
    with pytest.raises(ConfigError, match="--max-steps"):
        train(RECORDS, _config(tmp_path / "no-model", out, max_steps=0))
    assert not out.exists()
