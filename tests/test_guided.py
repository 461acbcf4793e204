"""Guided output: the declared shapes in each backend's form, constrained local generation on
a tiny random Llama (every complete reply parses to exactly its declared parts), the guided
request fields an endpoint gets per --guided mode, a server refusing them, and bad --prompts."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3

import pytest

from oracle_server import Fault, default_reply
from rtune.cli import main
from rtune.endpoint_config import EndpointConfig
from rtune.errors import ConfigError
from rtune.guided import (
    JUDGE,
    NAMESPACE,
    GuidedSpec,
    Mark,
    Text,
    from_json,
    reflection,
    stage_shape,
)
from rtune.guided_forms import conforms, gbnf, json_schema, lark, regex
from rtune.judge import judge
from rtune.judge_parse import parse_scores
from rtune.parse import _clean, parse_sections
from rtune.recycle import recycle
from rtune.recycle_config import RecycleConfig
from rtune.reflection import check_reflection_reply, parse_reflection
from rtune.status import run_status
from rtune.store import RunStore

ECHO = ("your new instruction", "your new answer")
SHAPES = {"instruction": stage_shape("instruction", ECHO), "response": stage_shape("response"),
          "compress": stage_shape("compress"), "judge": JUDGE,
          "reflection": reflection(1), "reflection-answer": reflection(0)}
GOOD = {
    "instruction": "Too easy.\n\n[New Instruction] Compare two fruits. [End]\n"
                   "[New Answer] Apples [1] differ [End]\n",
    "response": "Vague.\n[Better Answer] Keep a schedule. [End]",
    "compress": "[Merged Instruction] Translate 'hi'. [End]",
    "judge": "7 9\nAssistant 2 is more detailed.",
    "reflection": "<thinking>\nA\n<reflection>\nB\n</reflection>\n</thinking>\n<output>\nC\n"
                  "</output>",
    "reflection-answer": "<thinking>\nA\n</thinking>\n<output>\nC\n</output>",
}
BAD = {
    "instruction": ["[New Instruction] a [End]\n[New Answer] b [End]",  # no critique
                    "c [New Instruction] a [end] [End]\n[New Answer] b [End]",
                    "c [New Instruction] a [End]\n[New Answer] b [End] more"],
    "response": ["c [Better Answer]   [End]", "c [Better Answer] b"],
    "judge": ["11 9\nx", "7 9", "7/10 9/10\nx"],
    "reflection": ["<thinking>\nA\n</thinking>\n<output>\nC\n</output>",
                   "<thinking>\nA <output>\n<reflection>\nB\n</reflection>\n</thinking>\n"
                   "<output>\nC\n</output>"],
}


# ---------------------------------------------------------------- the forms, no model


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_form_of_a_shape_agrees_on_a_complete_reply(name):
    shape = SHAPES[name]
    assert conforms(shape, GOOD[name])
    for bad in BAD.get(name, []):
        assert not conforms(shape, bad), bad
    assert gbnf(shape).startswith("root ::= ") and "start: REPLY" in lark(shape)
    assert re.compile(regex(shape))  # plain syntax: Python reads it as servers do
    schema = json_schema(shape)
    assert schema["additionalProperties"] is False and schema["required"]
    first = next(i for i in shape.items if isinstance(i, Text) or not isinstance(i, Mark))
    if name in ("instruction", "response"):  # the critique comes first, in JSON too
        assert schema["required"][0] == "critique" == first.name


def test_a_json_reply_maps_back_to_the_marked_text_the_parser_reads():
    text = from_json(SHAPES["instruction"], json.dumps(
        {"critique": "Too easy.", "new_instruction": "Explain tides.",
         "new_answer": "The moon pulls the sea."}))
    parsed = parse_sections(text, ("New Instruction", "New Answer"), ECHO)
    assert parsed.ok and parsed.fields == {"New Instruction": "Explain tides.",
                                           "New Answer": "The moon pulls the sea."}
    assert text.startswith("Too easy.") and conforms(SHAPES["instruction"], text)
    judged = from_json(JUDGE, json.dumps({"score_1": 8, "score_2": 10, "explanation": "ok"}))
    assert parse_scores(judged) == (8.0, 10.0)
    tags = from_json(reflection(1), json.dumps({"thinking": "t", "output": "o", "reflections": [
        {"reflection": "r", "continued": ""}]}))
    assert conforms(reflection(1), tags) and check_reflection_reply(tags)[1] is None
    for cut in ('{"critique": "Too ea', '{"score_1": 11, "score_2": 1, "explanation": "x"}',
                "not json"):
        assert from_json(JUDGE if "score" in cut else SHAPES["instruction"], cut) is None


# ---------------------------------------------------------------- local constrained decoding


def _split(shape_name: str, text: str) -> dict[str, str]:
    """The declared parts of a complete reply, found by its markers (no text may hold one)."""
    if shape_name == "judge":
        first, rest = text.split("\n", 1)
        return {"scores": first, "explanation": rest}
    if shape_name.startswith("reflection"):
        return {"output": text.split("\n</thinking>\n<output>\n")[1].split("\n</output>")[0],
                "reflections": re.findall(r"\n<reflection>\n(.*?)\n</reflection>", text, re.S)}
    labels = SHAPES[shape_name].labels
    parts = {}
    for label in labels:
        start = text.index(f"[{label}]") + len(label) + 2
        parts[label] = text[start:text.index("[End]", start)]
    return parts


def _check_complete(shape_name: str, text: str) -> None:
    """A complete guided reply parses to exactly its declared parts."""
    shape = SHAPES[shape_name]
    assert conforms(shape, text), text
    parts = _split(shape_name, text)
    if shape_name == "judge":
        assert parse_scores(text) == tuple(float(x) for x in parts["scores"].split())
    elif shape_name.startswith("reflection"):
        parsed = parse_reflection(text)
        assert check_reflection_reply(text)[1] is None and not parsed.flagged
        assert parsed.output == parts["output"].strip()
        assert parsed.reflections == [r.strip() for r in parts["reflections"] if r.strip()]
    else:
        parsed = parse_sections(text, shape.labels, shape.echo)
        assert parsed.ok, (parsed.reasons, text)
        assert parsed.fields == {k: _clean(v) for k, v in parts.items()}


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama_path):
    from rtune.oracle.local import LocalBackend

    return LocalBackend(str(tiny_llama_path), batch_size=4)


def _eos_bias(backend, value: float):
    """Make the random model want to stop (its end token gets ``value`` added to its logit)."""
    import torch

    bias = torch.zeros(backend.model.config.vocab_size)
    bias[backend.tokenizer.eos_token_id] = value
    return backend.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)


@pytest.mark.parametrize("shape_name", ["instruction", "response", "judge", "reflection",
                                        "reflection-answer", "compress"])
def test_constrained_local_replies_parse_to_exactly_their_parts(tiny_backend, shape_name):
    """Whatever the random weights say (greedy or sampled, a model that never stops or one that
    wants to stop at once), a reply either is complete and parses to exactly its declared
    parts, or is cut at its token budget and says so."""
    import torch

    shape = SHAPES[shape_name]
    prompt = tiny_backend.prompt_ids([{"role": "user", "content": "Give three tips."}])
    complete = 0
    for bias in (0.0, 4.0, 12.0):
        hook = _eos_bias(tiny_backend, bias)
        try:
            for temperature in (0.0, 1.0):
                torch.manual_seed(int(bias) + 7)
                outs = tiny_backend.generate(
                    [prompt] * 4, max_new=[24, 48, 96, 160], stops=[None] * 4,
                    temperature=temperature, guided=[GuidedSpec(shape, "auto")] * 4)
                for out in outs:
                    assert out.guided["used"] == "grammar" and "note" not in out.guided
                    if out.finish_reason == "stop":
                        _check_complete(shape_name, out.text)
                        complete += 1
                    else:
                        assert out.finish_reason == "length" and out.tokens_out in (
                            24, 48, 96, 160)
        finally:
            hook.remove()
    assert complete >= 4, complete  # the model that wants to stop finishes each shape


def test_local_json_and_regex_modes(tiny_backend):
    hook = _eos_bias(tiny_backend, 12.0)
    try:
        prompt = tiny_backend.prompt_ids([{"role": "user", "content": "Judge."}])
        regex_out, json_out = tiny_backend.generate(
            [prompt] * 2, max_new=[64, 12], stops=[None] * 2,
            guided=[GuidedSpec(JUDGE, "regex"), GuidedSpec(JUDGE, "json")])
    finally:
        hook.remove()
    assert regex_out.guided["used"] == "regex" and parse_scores(regex_out.text) is not None
    assert json_out.guided["used"] == "json"
    if json_out.finish_reason == "length":  # JSON has no markers to write at an end wish
        assert "incomplete" in json_out.guided["note"]
    else:
        assert parse_scores(json_out.text) is not None


def test_a_local_recycling_run_records_guided_and_cut(tiny_llama_path, tmp_path):
    src = tmp_path / "d.json"
    src.write_text(json.dumps([{"instruction": "Name a fruit.", "input": "", "output": "Apple."}]))
    recycle(src, tmp_path / "run", RecycleConfig(
        oracle=f"local:{tiny_llama_path}", stages=("response",), max_tokens=16, reask=0,
        progress=False))
    with RunStore(tmp_path / "run") as store:
        res = store.get_candidate(0, "res")
        guided = [v for _, v in store.items(NAMESPACE)]
    assert res.extra["guided"] == "grammar" and res.extra["cut"] is True  # 16 tokens: cut
    assert "reply cut at max tokens" in res.fallback_reason
    assert guided == [{"mode": "auto", "used": "grammar", "via": "llguidance"}]
    split = run_status(tmp_path / "run")["stages"]["response"]["guided"]
    assert split == {"grammar": {"done": 1, "ok": 0, "parse_success_rate": 0.0, "looped": 0}}


def _loop_on(backend, value: float = 30.0):
    """Make the random model write one token over and over (its logit raised by ``value``):
    the small model that never ends a text. Returns the hook and the token's text."""
    import torch

    token = backend.tokenizer.encode(" tip", add_special_tokens=False)[0]
    bias = torch.zeros(backend.model.config.vocab_size)
    bias[token] = value
    hook = backend.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    return hook, backend.tokenizer.decode([token])


@pytest.mark.parametrize("shape_name", ["instruction", "response", "judge", "reflection",
                                        "reflection-answer", "compress"])
def test_the_loop_guard_ends_a_repeating_text_as_if_the_model_had(tiny_backend, shape_name):
    """Unguarded, a model that repeats itself runs to its budget and is cut; with the loop
    guard each repeating text is ended where the repetition is found, one copy kept, and the
    reply is complete and parses to exactly its declared parts. The dropped tokens still count
    as generated, and the provenance says how many texts were ended."""
    shape = SHAPES[shape_name]
    prompt = tiny_backend.prompt_ids([{"role": "user", "content": "Give three tips."}])
    hook, word = _loop_on(tiny_backend)
    try:
        unguarded, guarded = tiny_backend.generate(
            [prompt] * 2, max_new=[300] * 2, stops=[None] * 2,
            guided=[GuidedSpec(shape, "auto"), GuidedSpec(shape, "auto", loop_guard=32)])
    finally:
        hook.remove()
    assert unguarded.finish_reason == "length" and "looped" not in unguarded.guided
    assert (word * 8).strip() in unguarded.text
    assert guarded.finish_reason == "stop" and guarded.guided["looped"] >= 1
    _check_complete(shape_name, guarded.text)
    assert (word * 2).strip() not in guarded.text  # one copy of each repetition kept
    shown = len(tiny_backend.tokenizer.encode(guarded.text, add_special_tokens=False))
    assert guarded.tokens_out > shown + 16


def test_a_recycling_run_records_the_texts_the_loop_guard_ended(tiny_llama_path, tiny_backend,
                                                                  tmp_path):
    src = tmp_path / "d.json"
    src.write_text(json.dumps([{"instruction": f"Name fruit {i}.", "input": "",
                                "output": "Apple."} for i in range(3)]))
    config = RecycleConfig(oracle=f"local:{tiny_llama_path}", stages=("response",),
                           max_tokens=200, reask=0, progress=False)
    hook, _ = _loop_on(tiny_backend)
    try:
        recycle(src, tmp_path / "guarded", config, backend=tiny_backend)
        recycle(src, tmp_path / "unguarded", dataclasses.replace(config, loop_guard=0),
                backend=tiny_backend)
    finally:
        hook.remove()
    with RunStore(tmp_path / "guarded") as store:
        cands = list(store.candidates("res"))
        requests = [json.loads(r) for (r,) in store.db.execute("SELECT request FROM calls")]
    assert [c.parse_status for c in cands] == ["ok"] * 3
    assert all(c.extra["looped"] >= 1 and "cut" not in c.extra for c in cands)
    assert all(r["guided"]["loop_guard"] == 64 for r in requests)  # part of the call's key
    split = run_status(tmp_path / "guarded")["stages"]["response"]["guided"]
    assert split == {"grammar": {"done": 3, "ok": 3, "parse_success_rate": 1.0, "looped": 3}}
    with RunStore(tmp_path / "unguarded") as store:
        assert all(c.extra.get("cut") and "looped" not in c.extra
                   for c in store.candidates("res"))


def test_a_negative_loop_guard_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--loop-guard must be 0 or more"):
        RecycleConfig(oracle="local", loop_guard=-1)


# ---------------------------------------------------------------- endpoints


def _records(tmp_path, n=3):
    src = tmp_path / "d.json"
    src.write_text(json.dumps([{"instruction": f"Task {i}.", "input": "", "output": f"A{i}."}
                               for i in range(n)]))
    return src


def _config(server, **kw):
    kw = {"stages": ("response",), "concurrency": 4, **kw}
    return RecycleConfig(oracle=server.url, model="m", progress=False, **kw)


GUIDED_FIELDS = ("structured_outputs", "guided_regex", "regex", "grammar", "guided_grammar",
                 "response_format")


def _fields(body):
    return {k for k in GUIDED_FIELDS if k in body}


def _json_reply(body):
    """A server applying the JSON schema: the default reply's parts as the shape's object."""
    text = default_reply(body)
    if "score_1" in json.dumps(body.get("response_format", {})):
        return json.dumps({"score_1": 7, "score_2": 5, "explanation": "fine"})
    critique, _, rest = text.partition("[Better Answer]")
    return json.dumps({"critique": critique.strip(),
                       "better_answer": rest.replace("[End]", "").strip()})


@pytest.mark.parametrize("mode,field,reply", [
    ("regex", "structured_outputs", default_reply),
    ("grammar", "grammar", default_reply),
    ("json", "response_format", _json_reply),
])
def test_the_request_carries_the_guided_field_of_its_mode(oracle_server, tmp_path, mode, field,
                                                           reply):
    oracle_server.script(reply)
    s = recycle(_records(tmp_path), tmp_path / "run", _config(oracle_server, guided=mode))
    assert s.candidates["res"] == {"ok": 3}
    bodies = oracle_server.requests
    assert len(bodies) == 3 and all(_fields(b) == {field} for b in bodies)
    if mode == "regex":
        assert bodies[0]["structured_outputs"]["regex"] == regex(SHAPES["response"])
    elif mode == "grammar":
        assert bodies[0]["grammar"] == gbnf(SHAPES["response"])
    else:
        assert bodies[0]["response_format"]["json_schema"]["schema"] == json_schema(
            SHAPES["response"])
    with RunStore(tmp_path / "run") as store:
        calls = dict(store.items(NAMESPACE))
        cands = list(store.candidates("res"))
        assert store.get_meta("guided")[field if mode != "regex" else
                                        "structured_outputs.regex"] == "accepted"
    assert len(calls) == 3 and {c["used"] for c in calls.values()} == {mode}
    assert all(c.extra["guided"] == mode and "[Better Answer]" in c.raw for c in cands)


def test_a_server_refusing_the_guided_fields_is_found_once_and_the_run_goes_on(oracle_server,
                                                                               tmp_path):
    def refuses(body):
        return Fault(status=400) if _fields(body) else default_reply(body)

    oracle_server.script(refuses)
    code = main(["recycle", str(_records(tmp_path, 5)), "--run-dir", str(tmp_path / "run"),
                 "--oracle", oracle_server.url, "--model", "m", "--stages", "response",
                 "--guided", "auto", "--no-progress", "--concurrency", "4"])
    assert code == 0
    bodies = oracle_server.requests
    probes = [b for b in bodies if _fields(b)]
    assert len(probes) == 7  # each field once (3 regex, 3 grammar, 1 JSON schema), then none
    assert len(bodies) == 7 + 5
    with RunStore(tmp_path / "run") as store:
        assert store.candidate_counts()["res"] == {"ok": 5}
        calls = [c for _, c in store.items(NAMESPACE)]
        meta = store.get_meta("guided")
        assert all(c.extra["guided"] == "off" for c in store.candidates("res"))
    assert [c["used"] for c in calls] == ["off"] * 5
    assert sum("refused by the server" in c["note"] for c in calls) == 1
    assert meta["mode"] == "auto" and all(v.startswith("refused") for k, v in meta.items()
                                          if k != "mode")
    # and rtune status says so
    status = run_status(tmp_path / "run")
    assert status["stages"]["response"]["guided"] == {
        "off": {"done": 5, "ok": 5, "parse_success_rate": 1.0, "looped": 0}}


def test_a_server_ignoring_a_field_is_found_and_the_next_one_tried(oracle_server, tmp_path):
    def ignores_regex(body):  # takes only the llama.cpp grammar field; ignores the rest
        reply = default_reply(body)
        return reply if "grammar" in body else reply.split("\n", 1)[1]  # no critique

    oracle_server.script(ignores_regex)
    recycle(_records(tmp_path, 6), tmp_path / "run", _config(oracle_server, guided="auto",
                                                             concurrency=1))
    fields = [next(iter(_fields(b))) for b in oracle_server.requests]
    assert fields == ["structured_outputs", "guided_regex", "regex", "grammar", "grammar",
                      "grammar"]
    with RunStore(tmp_path / "run") as store:
        used = [c["used"] for _, c in sorted(store.items(NAMESPACE), key=lambda kv: kv[0])]
        meta = store.get_meta("guided")
    assert sorted(used) == ["grammar"] * 3 + ["off"] * 3
    assert meta["grammar"] == "accepted" and "ignored" in meta["guided_regex"]


def test_the_judge_asks_for_the_score_line_shape(oracle_server, tmp_path):
    rows = [{"question_id": str(i), "test_set": "t", "instruction": f"Q{i}?",
             "output": f"answer {i}"}
            for i in range(3)]
    for side in ("a", "b"):
        (tmp_path / f"{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    oracle_server.script(_json_reply)
    res = judge([tmp_path / "a.jsonl"], [tmp_path / "b.jsonl"], judge_spec=oracle_server.url,
                model="j", run_dir=tmp_path / "run", resamples=10, guided="json",
                options=EndpointConfig(concurrency=2))
    assert res["overall"]["n"] == 3 and res["failures"] == {}
    assert res["judge"]["guided"] == "json"
    assert res["judge"]["readable"] == {"json": {"replies": 6, "readable": 6}}
    assert all("response_format" in b for b in oracle_server.requests)


def test_endpoints_are_unguided_unless_asked(oracle_server, tmp_path):
    recycle(_records(tmp_path), tmp_path / "run", _config(oracle_server))
    assert not any(_fields(b) for b in oracle_server.requests)
    db = sqlite3.connect(tmp_path / "run" / "rtune.sqlite")
    assert db.execute("SELECT COUNT(*) FROM items WHERE ns = ?", (NAMESPACE,)).fetchone() == (0,)
    db.close()


# ---------------------------------------------------------------- bad --prompts


def test_a_prompts_override_that_lost_a_marker_is_refused_before_any_call(oracle_server,
                                                                          tmp_path, capsys):
    from importlib import resources

    text = resources.files("rtune").joinpath("prompts", "reflect_instruction.yaml").read_text()
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "reflect_instruction.yaml").write_text(text.replace("[New Answer]", "[Answer 2]"))
    code = main(["recycle", str(_records(tmp_path)), "--run-dir", str(tmp_path / "run"),
                 "--oracle", oracle_server.url, "--model", "m", "--prompts", str(folder),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and oracle_server.requests == [] and not (tmp_path / "run").exists()
    assert "reflect_instruction.yaml" in err and "'[New Answer]'" in err
    assert err.count("\n") == 1  # one line
    with pytest.raises(ConfigError, match="labels"):
        (folder / "reflect_instruction.yaml").write_text(
            text.replace("labels: [New Instruction, New Answer]", "labels: [New Instruction]"))
        recycle(_records(tmp_path), tmp_path / "run",
                _config(oracle_server, stages=("instruction",), prompts_dir=str(folder)))
