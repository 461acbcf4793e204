"""Prompt templates and training label masks, on hand-built conversations."""

from __future__ import annotations

import pytest

from rtune.errors import ConfigError
from rtune.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    VICUNA_SYSTEM,
    chat_template,
    encode_conversation,
    render,
    render_prompt,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital"},
    {"role": "user", "content": "And the sea?"},
    {"role": "assistant", "content": "The sea is wide and blue"},
]
LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
L3_SYS = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
          "Today Date: 26 Jul 2024\n\n")

# (untrained pieces, trained pieces) in order, for the tiny tokenizer: eos = pad = <|im_end|>,
# bos = <|im_start|>
EXPECTED = {
    "vicuna": (
        ["Be brief. USER: What is the capital of France? ASSISTANT:",
         "USER: And the sea? ASSISTANT:"],
        [" Paris is the capital<|im_end|>", " The sea is wide and blue<|im_end|>"]),
    "alpaca": (
        ["Be brief.\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:\n",
         "\n\n### Instruction:\nAnd the sea?\n\n### Response:\n", "\n\n"],
        ["Paris is the capital<|im_end|>", "The sea is wide and blue<|im_end|>"]),
    "llama2": (
        ["<|im_start|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is the capital of France? "
         "[/INST]", "<|im_start|>[INST] And the sea? [/INST]"],
        [" Paris is the capital <|im_end|>", " The sea is wide and blue <|im_end|>"]),
    "llama3": (
        ["<|im_start|>" + L3_SYS + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
         "\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant"
         "<|end_header_id|>\n\n",
         "<|start_header_id|>user<|end_header_id|>\n\nAnd the sea?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n"],
        ["Paris is the capital<|eot_id|>", "The sea is wide and blue<|eot_id|>"]),
    "chatml": (
        ["<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of "
         "France?<|im_end|>\n<|im_start|>assistant\n",
         "\n<|im_start|>user\nAnd the sea?<|im_end|>\n<|im_start|>assistant\n", "\n"],
        ["Paris is the capital<|im_end|>", "The sea is wide and blue<|im_end|>"]),
}
EXPECTED["auto"] = EXPECTED["chatml"]  # the tiny tokenizer's own template is ChatML


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


@pytest.fixture(scope="module")
def tok_llama3(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.add_tokens(LLAMA3_TOKENS, special_tokens=True)
    return t


def _runs(enc, tokenizer) -> tuple[list[str], list[str]]:
    """Decoded runs of consecutive untrained / trained tokens."""
    untrained, trained, cur, cur_trained = [], [], [], None
    for tid, label in zip(enc.input_ids, enc.labels):
        is_trained = label != IGNORE_INDEX
        if is_trained:
            assert label == tid  # a label is the token itself (the model shifts)
        if cur and is_trained != cur_trained:
            (trained if cur_trained else untrained).append(cur)
            cur = []
        cur.append(tid)
        cur_trained = is_trained
    if cur:
        (trained if cur_trained else untrained).append(cur)

    def dec(ids):
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    return [dec(r) for r in untrained], [dec(r) for r in trained]


def test_render_prompt_vicuna_is_fastchat_v11():
    assert render_prompt("vicuna", "Hi there") == f"{VICUNA_SYSTEM} USER: Hi there ASSISTANT:"
    assert VICUNA_SYSTEM.startswith("A chat between a curious user and an artificial")
    assert render_prompt("vicuna", "Hi", system="S") == "S USER: Hi ASSISTANT:"


def test_render_prompt_other_templates():
    assert render_prompt("alpaca", "Do X") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDo X\n\n### Response:\n")
    assert render_prompt("llama2", "Hi", system="S") == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST]")
    assert render_prompt("llama3", "Hi") == (
        "<|begin_of_text|>" + L3_SYS + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_prompt("chatml", "Hi", system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_auto_uses_the_tokenizers_template(tok):
    assert render_prompt("auto", "Hi", "S", tokenizer=tok) == tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_label_mask_exact(template, tok, tok_llama3):
    tokenizer = tok_llama3 if template == "llama3" else tok
    enc = encode_conversation(template, CONV, tokenizer)
    untrained, trained = _runs(enc, tokenizer)
    want_untrained, want_trained = EXPECTED[template]
    assert trained == want_trained
    assert untrained == want_untrained
    # the training text is exactly what the chat template renders (inference matches)
    full = render(template, CONV, tokenizer=tokenizer)
    assert enc.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert not enc.truncated and enc.length == len(enc.input_ids)


@pytest.mark.parametrize("template", ["vicuna", "alpaca", "llama2", "chatml"])
def test_end_of_turn_trained_even_when_pad_is_eos(template, tok):
    assert tok.pad_token_id == tok.eos_token_id
    eos = tok.eos_token_id
    enc = encode_conversation(template, CONV, tok)
    trained_eos = sum(1 for t, lab in zip(enc.input_ids, enc.labels)
                      if t == eos and lab == eos)
    assert trained_eos == 2  # one per assistant turn
    if template == "chatml":  # system/user turns end with the same id, and are not trained
        untrained_eos = sum(1 for t, lab in zip(enc.input_ids, enc.labels)
                            if t == eos and lab == IGNORE_INDEX)
        assert untrained_eos == 3


def test_truncation_keeps_prefix_and_counts(tok):
    full = encode_conversation("chatml", CONV, tok)
    cut_len = full.labels.index(next(x for x in full.labels if x != IGNORE_INDEX)) + 2
    cut = encode_conversation("chatml", CONV, tok, max_length=cut_len)
    assert cut.truncated and cut.length == len(full.input_ids)
    assert cut.input_ids == full.input_ids[:cut_len] and cut.answer_tokens == 2
    none_left = encode_conversation("chatml", CONV, tok, max_length=5)
    assert none_left.answer_tokens == 0


def test_template_errors(tok):
    from transformers import AutoTokenizer

    from rtune.templates import check_tokenizer

    with pytest.raises(ConfigError, match="unknown template"):
        render_prompt("mistral", "Hi")
    with pytest.raises(ConfigError, match="<\\|eot_id\\|>"):
        check_tokenizer("llama3", tok)
    no_bos = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_bos.bos_token = None
    with pytest.raises(ConfigError, match="BOS"):
        check_tokenizer("llama2", no_bos)
    check_tokenizer("vicuna", no_bos)  # vicuna never uses the BOS token
    bare = AutoTokenizer.from_pretrained(tok.name_or_path)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="auto"):
        chat_template("auto", bare)
    # a template that rewrites earlier turns cannot be masked by prefixes
    bare.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] }}"
                          "{% else %}#{% endif %}{% endfor %}")
    with pytest.raises(ConfigError, match="explicit --template"):
        encode_conversation("auto", CONV, bare)


def test_saved_chat_template_renders_like_training(tok):
    for name in ("vicuna", "alpaca", "llama2", "chatml"):
        source = chat_template(name)
        direct = tok.apply_chat_template(CONV[:2], chat_template=source, tokenize=False,
                                         add_generation_prompt=True)
        assert direct == render_prompt(name, CONV[1]["content"], CONV[0]["content"], tok)
