"""Prompt / chat templates shared by training, scoring and generation.

Each template is one Jinja chat template (the format ``tokenizer.chat_template`` uses), so the
text a model is trained on, the text it is scored on and the text it sees at inference come from
the same source, and a trained model is saved with the template it learnt.

Rendered text contains the special tokens as text (``<s>``, ``<|eot_id|>``, ...), like
``apply_chat_template(tokenize=False)``: tokenize it with ``add_special_tokens=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ConfigError

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")

# FastChat "vicuna_v1.1": "{system} USER: {u} ASSISTANT: {a}</s>USER: ..."
_VICUNA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% if system %}{{ system + ' ' }}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Stanford Alpaca (no-input form; the input is folded into the instruction), multi-turn as in
# LLaMA-Factory: turns follow each other separated by a blank line.
_ALPACA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '" + ALPACA_SYSTEM + "' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% if system %}{{ system + '\n\n' }}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

# Meta's Llama 2 chat format: <s>[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{u} [/INST] {a} </s>
_LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}"
    "{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] | trim %}"
    "{% else %}{% set content = message['content'] | trim %}{% endif %}"
    "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# The stock Llama 3.1 Instruct template (without tool calling).
_LLAMA3 = (
    "{{ bos_token }}"
    "{% if date_string is not defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] | trim %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\n' }}"
    "{{ 'Today Date: ' + date_string + '\n\n' }}"
    "{{ system_message + '<|eot_id|>' }}"
    "{% for message in loop_messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Template:
    name: str
    jinja: str | None  # None: the tokenizer's own chat template ("auto")
    end_of_turn: str | None  # None: the tokenizer's EOS token
    needs: tuple[str, ...] = ()  # special tokens the tokenizer must know as single tokens
    bos: str = "<s>"  # defaults when rendering without a tokenizer
    eos: str = "</s>"


TEMPLATES: dict[str, Template] = {
    "vicuna": Template("vicuna", _VICUNA, None),
    "alpaca": Template("alpaca", _ALPACA, None),
    "llama2": Template("llama2", _LLAMA2, None),
    "llama3": Template("llama3", _LLAMA3, "<|eot_id|>",
                       ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                       bos="<|begin_of_text|>", eos="<|eot_id|>"),
    "chatml": Template("chatml", _CHATML, "<|im_end|>", ("<|im_start|>", "<|im_end|>"),
                       bos="", eos="<|im_end|>"),
    "auto": Template("auto", None, None),
}
ALIASES = {"fastchat": "vicuna", "llama-2": "llama2", "llama-3": "llama3", "llama3.1": "llama3",
           "llama-3.1": "llama3"}


def get_template(name: str) -> Template:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}: choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[key]


def chat_template(template: str, tokenizer: Any = None) -> str:
    """The Jinja chat template string of ``template`` (for ``auto``: the tokenizer's own)."""
    tpl = get_template(template)
    if tpl.jinja is not None:
        return tpl.jinja
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not own:
        raise ConfigError("template 'auto' needs a tokenizer with a chat template; this one has "
                          "none: pick --template vicuna, alpaca, llama2, llama3 or chatml")
    if isinstance(own, dict):  # several named templates: use the default one
        own = own.get("default") or next(iter(own.values()))
    return own


def end_of_turn(template: str, tokenizer: Any = None) -> str:
    """The text that closes an assistant turn (trained along with the answer)."""
    tpl = get_template(template)
    if tpl.end_of_turn is not None:
        return tpl.end_of_turn
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    return eos or tpl.eos


def check_tokenizer(template: str, tokenizer: Any) -> None:
    """Raise ConfigError when the tokenizer cannot represent the template's special tokens."""
    tpl = get_template(template)
    chat_template(template, tokenizer)  # 'auto' without a chat template
    if tpl.end_of_turn is None and tpl.jinja is not None and not tokenizer.eos_token:
        raise ConfigError(f"template {tpl.name!r} ends each answer with the EOS token, "
                          "but the tokenizer has none")
    if tpl.jinja is not None and "bos_token" in tpl.jinja and not tokenizer.bos_token:
        raise ConfigError(f"template {tpl.name!r} starts with the BOS token, but this model's "
                          "tokenizer has none: use --template auto (the model's own chat "
                          "template) or vicuna / alpaca / chatml")
    vocab = tokenizer.get_vocab()
    missing = [t for t in tpl.needs if t not in vocab]
    if missing:
        raise ConfigError(f"template {tpl.name!r} needs the special tokens {', '.join(missing)}, "
                          "which this model's tokenizer does not have: use --template auto (the "
                          "model's own chat template) or vicuna / alpaca / llama2")


def render(template: str, messages: list[dict[str, str]], *, tokenizer: Any = None,
           add_generation_prompt: bool = False) -> str:
    """Render a conversation (``[{"role": ..., "content": ...}]``) as text."""
    source = chat_template(template, tokenizer)
    if tokenizer is not None:
        return tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False,
            add_generation_prompt=add_generation_prompt)
    tpl = get_template(template)
    return _compile(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=tpl.bos, eos_token=tpl.eos)


def render_prompt(template: str, user: str, system: str | None = None,
                  tokenizer: Any = None) -> str:
    """The prompt text for one user turn, up to where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": user})
    return render(template, messages, tokenizer=tokenizer, add_generation_prompt=True)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # the same environment settings as transformers' apply_chat_template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


# -- training: conversation -> input_ids + labels ----------------------------------------------

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenized conversation; ``labels`` is -100 wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    length: int  # tokens before truncation
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def conversation_segments(template: str, messages: list[dict[str, str]],
                          tokenizer: Any = None) -> list[tuple[str, bool]]:
    """The rendered conversation cut into ``(text, trained)`` pieces.

    Trained pieces are each assistant answer with its end-of-turn token; everything else
    (system, user turns, role headers, separators after the end-of-turn) is not. The pieces
    are found by rendering growing prefixes of the conversation, so they are exactly the text
    the chat template produces, for every template including ``auto``.
    """
    eot = end_of_turn(template, tokenizer)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render(template, messages[:i], tokenizer=tokenizer, add_generation_prompt=True)
        full = render(template, messages[:i + 1], tokenizer=tokenizer)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ConfigError(
                f"the {get_template(template).name!r} chat template renders earlier turns "
                "differently once a later turn is added, so assistant turns cannot be located "
                "for loss masking: pick an explicit --template (vicuna, alpaca, llama2, "
                "llama3, chatml)")
        if len(prompt) > len(done):
            segments.append((prompt[len(done):], False))
        answer = full[len(prompt):]
        cut = answer.rfind(eot) if eot else -1
        end = cut + len(eot) if cut >= 0 else len(answer)
        segments.append((answer[:end], True))
        if end < len(answer):
            segments.append((answer[end:], False))
        done = full
    return segments


def encode_conversation(template: str, messages: list[dict[str, str]], tokenizer: Any,
                        max_length: int | None = None) -> Encoded:
    """Tokenize a conversation for training, with labels only on the assistant tokens.

    Labels come from the template segments (character spans mapped to tokens), never from
    token ids, so an end-of-turn token that equals the pad token is still trained.
    """
    segments = conversation_segments(template, messages, tokenizer)
    if getattr(tokenizer, "is_fast", False):
        ids, trained = _encode_with_offsets(segments, tokenizer)
    else:
        ids, trained = [], []
        for text, is_trained in segments:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            trained += [is_trained] * len(piece)
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]
    length = len(ids)
    if max_length is not None and length > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels, length, length > len(ids))


def _encode_with_offsets(segments: list[tuple[str, bool]],
                         tokenizer: Any) -> tuple[list[int], list[bool]]:
    text = "".join(s for s, _ in segments)
    spans, pos = [], 0
    for s, is_trained in segments:
        if is_trained:
            spans.append((pos, pos + len(s)))
        pos += len(s)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = []
    for start, end in enc["offset_mapping"]:
        # a token is trained when it starts inside an answer span (offsets may be trimmed of
        # leading spaces, which keeps the start inside the span)
        trained.append(any(a <= start < b for a, b in spans) and end > start)
    return list(enc["input_ids"]), trained
