"""Shared fixtures: a tiny random Llama with a real (tiny) tokenizer, built in the test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Give three tips for staying healthy. Eat a balanced diet, exercise and sleep well.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is wide and blue, it sings to me and you.",
    "Explain why the sky is blue. Sunlight scatters off air molecules; blue scatters most.",
    "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
    "### Instruction: ### Input: ### Response: Below is an instruction that describes a task.",
]


def build_tiny_llama(folder: Path, *, vocab_size: int = 400, hidden: int = 64,
                     layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised Llama + a small BPE tokenizer (pad = eos, like SmolLM2)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>", model_max_length=2048)
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    """In an environment with the core install alone (no torch), tests that run a local model
    are skipped; everything else (endpoints, store, select, judge, stats) still runs."""
    from rtune.extras import missing

    if missing("local") is None:
        return
    skip = pytest.mark.skip(reason="needs the local-models extra (pip install 'rtune[local]')")
    for item in items:
        if ("tiny_llama_path" in item.fixturenames or item.get_closest_marker("slow")
                or item.get_closest_marker("local")):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> Path:
    """Folder of a tiny random Llama (hidden 64, 2 layers) and its tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def oracle_server():
    """A loopback OpenAI-compatible server (see tests/oracle_server.py)."""
    from oracle_server import OracleServer

    with OracleServer() as server:
        yield server
