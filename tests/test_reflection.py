"""The Reflection 70B format: parser, recycling stage, format/loop inference, tiny training."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtune.cli import main
from rtune.prompts import load_prompt
from rtune.records import Record
from rtune.reflect import parse_verdict, question_text, reflect
from rtune.reflection import (
    add_reflection_special_tokens,
    canonical_reflection,
    extract_output,
    format_reflection,
    parse_reflection,
)
from rtune.reflection_stage import (
    build_reflection_reask,
    build_reflection_request,
    parse_reflection_reply,
    reflection_system_prompt,
)
from rtune.store import RunStore

COIN = ("A coin is put in a cup, the cup is put on the bed, and the cup is turned upside "
        "down. Where is the coin?")
COIN_REPLY = ("<thinking>\nThe coin is in the cup, so it moves with the cup.\n<reflection>\n"
              "Turning the cup upside down lets the coin fall out onto the bed; it is no longer "
              "in the cup.\n</reflection>\nSo the coin lies on the bed.\n</thinking>\n"
              "<output>\nThe coin is on the bed.\n</output>")


# ---------------------------------------------------------------- parser

def test_well_formed_reply_splits_into_parts():
    p = parse_reflection(COIN_REPLY)
    assert (p.output, p.flagged, p.reason) == ("The coin is on the bed.", False, None)
    assert p.thinking.startswith("The coin is in the cup")
    assert "<reflection>" in p.thinking  # the reflection stays nested in the thinking
    assert p.reflections == ["Turning the cup upside down lets the coin fall out onto the bed; "
                             "it is no longer in the cup."]


@pytest.mark.parametrize("text, output, reflections, reason", [
    # unclosed reflection, thinking and output (generation cut off or sloppy)
    ("<thinking>a <reflection>fix one <output>On the bed.", "On the bed.", ["fix one"],
     "unclosed <reflection>; unclosed <thinking>; unclosed <output>"),
    # several reflection blocks, the second opened before the first was closed
    ("<thinking>a<reflection>r1<reflection>r2</reflection></thinking><output>x</output>", "x",
     ["r1", "r2"], "unclosed <reflection>"),
    # reflection outside the thinking, tags in other cases and with spaces
    ("<THINKING>a</THINKING>< reflection >r</reflection ><Output>x</Output>", "x", ["r"], None),
    # output nested inside the thinking
    ("<thinking>a<output>x</output></thinking>", "x", [], "unclosed <thinking>; stray </thinking>"),
    # repeated output: the last non-empty one is the final answer
    ("<output>first</output><thinking>t</thinking><output>second</output><output> </output>",
     "second", [], "3 <output> blocks, used the last non-empty one"),
])
def test_malformed_replies_are_repaired(text, output, reflections, reason):
    p = parse_reflection(text)
    assert (p.output, p.reflections, p.reason, p.flagged) == (output, reflections, reason, False)


def test_tags_inside_code_are_content_not_structure():
    text = ("<thinking>An HTML question.</thinking>\n<output>Use the `<output>` element:\n"
            "```html\n<output name=\"x\"></output>\n<output>42</output>\n```\n</output>")
    p = parse_reflection(text)
    assert not p.flagged
    assert p.output.startswith("Use the `<output>` element:")
    assert p.output.endswith("<output>42</output>\n```")
    # closing fence and closing tag on one line; inner blank lines kept as they are
    text = "<thinking>t</thinking><output>a\n\n\n\nb\n```\n<output>c</output>\n```</output>"
    assert extract_output(text) == ("a\n\n\n\nb\n```\n<output>c</output>\n```", False)
    # only inline code mentions the tag: that is no structure at all
    assert extract_output("Wrap it in `<output>` tags.") == ("Wrap it in `<output>` tags.", True)


def test_reply_wrapped_whole_in_a_fence_is_still_parsed():
    p = parse_reflection(f"```xml\n{COIN_REPLY}\n```")
    assert p.output == "The coin is on the bed." and not p.flagged
    assert p.reason == "tags only inside a code fence"


@pytest.mark.parametrize("text, output, reason", [
    ("The coin is on the bed.", "The coin is on the bed.", "no tags"),
    ("<thinking>cup flips</thinking>\nOn the bed.", "On the bed.",
     "no <output>: used the text outside <thinking>"),
    ("<thinking>still thinking when cut off", "<thinking>still thinking when cut off",
     "unclosed <thinking>; no <output>: whole text"),
    ("<thinking>t</thinking><output>  </output>", "<thinking>t</thinking><output>  </output>",
     "empty <output>: whole text"),
    ("", "", "empty reply"),
])
def test_missing_output_falls_back_and_is_flagged(text, output, reason):
    p = parse_reflection(text)
    assert (p.output, p.flagged, p.reason) == (output, True, reason)
    assert extract_output(text) == (output, True)


@pytest.mark.timeout(30)
def test_parser_is_linear_in_the_number_of_tags():
    # 20,000 unclosed reflections between inline code: took minutes when it was quadratic
    p = parse_reflection("`x` <reflection>a " * 20000 + "<output>done")
    assert p.output == "done" and len(p.reflections) == 20000


_plain = st.text(st.characters(blacklist_characters="<>`", blacklist_categories=("Cs",)),
                 max_size=40).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
    ["<thinking>", "</thinking>", "<reflection>", "</reflection>", "<output>", "</output>",
     "```\n", "`", "\n", "< output >", "</OUTPUT>"])), max_size=25))
def test_parser_never_raises(parts):
    p = parse_reflection("".join(parts))
    assert isinstance(p.output, str) and isinstance(p.reflections, list)
    assert p.flagged == (extract_output("".join(parts))[1])
    if not p.flagged:
        assert p.output.strip() and p.output == p.output.strip()


@settings(max_examples=200, deadline=None)
@given(_plain, st.lists(_plain, max_size=3), _plain)
def test_canonical_text_round_trips(thinking, reflections, output):
    p = parse_reflection(format_reflection(thinking, output, reflections))
    assert (p.output, p.reflections, p.flagged, p.reason) == (output, reflections, False, None)
    assert parse_reflection(canonical_reflection(p)) == p


# ---------------------------------------------------------------- recycling stage

def test_recycling_request_and_reply():
    rec = Record(instruction="Where is the coin?", input="cup on the bed, turned over",
                 output="In the cup.", source_index=3)
    prompt = load_prompt("reflection_format")
    req = build_reflection_request(rec, prompt, "m", with_example=True, max_tokens=512)
    user = req.messages[-1]["content"]
    assert "Where is the coin?" in user and "cup on the bed" in user and "In the cup." in user
    assert len(req.messages) == 4 and "<reflection>" in req.messages[2]["content"]  # example
    assert req.max_tokens == 512 and req.model == "m"

    good = parse_reflection_reply(rec, COIN_REPLY)
    assert good.kind == "reflection" and good.parse_status == "ok" and good.source_index == 3
    assert good.fallback_reason is None and good.system == reflection_system_prompt()
    assert "<thinking>" in good.system  # the format is explained in the system turn
    assert extract_output(good.output) == ("The coin is on the bed.", False)
    # trains with the stock Llama 3.1 chat template, the system prompt included
    from rtune.templates import render

    text = render("llama3", good.to_messages())
    assert "system<|end_header_id|>\n\nCutting Knowledge Date" in text
    assert f"{good.system}<|eot_id|>" in text and f"{good.output}<|eot_id|>" in text

    repaired = parse_reflection_reply(rec, "<thinking>t<reflection>r<output>On the bed.")
    assert repaired.parse_status == "ok" and repaired.fallback_reason.startswith("repaired:")
    assert parse_reflection(repaired.output).reason is None  # now well-formed
    assert parse_reflection(repaired.output).reflections == ["r"]

    for bad, why in [("On the bed.", "no tags"), ("<output>On the bed.</output>", "no <thinking>")]:
        cand = parse_reflection_reply(rec, bad)
        assert cand.parse_status == "fallback" and cand.fallback_reason.startswith(why)
        assert cand.output == "In the cup." and cand.system is None and cand.raw == bad
        again = build_reflection_reask(req, bad, why)
        assert again.messages[-2] == {"role": "assistant", "content": bad}
        assert why in again.messages[-1]["content"] and again.key() != req.key()


def test_stage_re_asks_a_malformed_reply(oracle_server, tmp_path):
    import asyncio

    from rtune.oracle import Engine, EngineConfig
    from rtune.oracle.http import HttpBackend
    from rtune.reflection_stage import reflection_candidate

    rec = Record(instruction="Where is the coin?", output="In the cup.")
    prompt = load_prompt("reflection_format")

    async def run(replies: list[str], reask: int) -> Record:
        oracle_server.script_sequence(replies)
        with RunStore(tmp_path / str(len(oracle_server.requests))) as store:
            engine = Engine(HttpBackend(oracle_server.url), store, EngineConfig(max_retries=0))
            try:
                return await reflection_candidate(engine, rec, prompt, "m", reask=reask)
            finally:
                await engine.backend.aclose()

    fixed = asyncio.run(run(["The coin is on the bed.", COIN_REPLY], reask=1))
    assert fixed.parse_status == "ok" and fixed.fallback_reason == "re-asked 1x"
    assert extract_output(fixed.output)[0] == "The coin is on the bed."
    assert fixed.raw.startswith("The coin is on the bed.\n\n--- re-ask ---")
    follow_up = oracle_server.requests[1]["messages"]
    assert follow_up[-2]["content"] == "The coin is on the bed." and "no tags" in follow_up[-1][
        "content"]
    given_up = asyncio.run(run(["nope", "<output>still no thinking</output>"], reask=1))
    assert given_up.parse_status == "fallback" and given_up.output == "In the cup."
    assert given_up.fallback_reason == "no <thinking>, kept the original answer; re-asked 1x"
    assert len(oracle_server.requests) == 4


def test_recycle_stage_reflection_format_end_to_end(oracle_server, tmp_path):
    from rtune.recycle import recycle
    from rtune.recycle_config import RecycleConfig

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "Where is the coin?", "input": "",
                                 "output": "In the cup."},
                                {"instruction": "Say hi.", "input": "", "output": "hi"}]))
    oracle_server.script(lambda body: COIN_REPLY if "coin" in body["messages"][-1]["content"]
                         else "hello")
    config = RecycleConfig(stages=("reflection-format",), oracle=oracle_server.url, model="m",
                           progress=False)
    from rtune.estimate import estimate

    assert estimate(data, config)["stages"]["reflection-format"]["calls"] == 2  # --dry-run
    summary = recycle(data, tmp_path / "run", config, output=tmp_path / "out.jsonl")
    assert summary.candidates["reflection"] == {"ok": 1, "fallback": 1}
    assert estimate(data, config, tmp_path / "run")["total"]["calls"] == 0  # all done
    assert len(oracle_server.requests) == 3  # coin, hi, and a re-ask of the malformed "hello"
    reask = next(r["messages"] for r in oracle_server.requests if len(r["messages"]) == 4)
    assert reask[-2] == {"role": "assistant", "content": "hello"} and "no tags" in reask[-1][
        "content"]
    assert all(r["messages"][0]["role"] == "system" for r in oracle_server.requests)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    coin = next(r for r in rows if r["kind"] == "reflection" and r["source_index"] == 0)
    assert coin["prompt_id"] == "reflection_format" and coin["raw"] == COIN_REPLY
    assert extract_output(coin["output"])[0] == "The coin is on the bed."
    assert coin["system"] == reflection_system_prompt()
    hi = next(r for r in rows if r["kind"] == "reflection" and r["source_index"] == 1)
    assert hi["output"] == "hi" and hi["parse_status"] == "fallback"
    assert hi["fallback_reason"] == "no tags, kept the original answer; re-asked 1x"
    again = recycle(data, tmp_path / "run", config)
    assert again.candidates == summary.candidates and len(oracle_server.requests) == 3


# ---------------------------------------------------------------- inference modes

def test_format_mode_against_an_endpoint_resumes_from_the_store(oracle_server, tmp_path):
    oracle_server.script(lambda body: COIN_REPLY if "coin" in body["messages"][-1]["content"]
                         else "plain answer")
    questions = [{"id": "coin", "question": COIN}, {"instruction": "Say", "input": "hi"}]
    results = reflect(questions, oracle=oracle_server.url, model="m", run_dir=tmp_path)
    assert [r["id"] for r in results] == ["coin", "1"]
    assert results[0]["answer"] == "The coin is on the bed." and not results[0]["flagged"]
    assert results[1]["answer"] == "plain answer" and results[1]["flagged"]
    sent = oracle_server.requests[0]["messages"]
    assert sent[0]["role"] == "system" and "<output>" in sent[0]["content"]
    assert len(sent) == 2  # endpoints get no worked example
    assert {m["messages"][-1]["content"] for m in oracle_server.requests} == {COIN, "Say\n\nhi"}

    again = reflect(questions, oracle=oracle_server.url, model="m", run_dir=tmp_path)
    assert again == results and len(oracle_server.requests) == 2  # nothing paid twice
    with RunStore(tmp_path) as store:
        assert len(store.item_keys("reflect")) == 2
        assert store.call_totals()["calls"] == 2


def _loop_script(critiques: list[str]):
    """Draft wrong, critique from ``critiques`` in order, revision right."""
    def fn(body):
        user = body["messages"][-1]["content"]
        if user.startswith("Here is a question and an answer"):
            return critiques.pop(0)
        if user.startswith("Here is a question, an answer to it, and a critique"):
            draft_round = "Critique: the cup was turned over" in user
            return "The coin is on the bed." if draft_round else "Still on the bed."
        return "The coin is in the cup."
    return fn


def test_loop_mode_keeps_every_round_and_stops_when_correct(oracle_server, tmp_path):
    oracle_server.script(_loop_script([
        "Critique: the cup was turned over, so the coin fell out.\nVerdict: revise",
        "Nothing to fix.\n**Verdict:** correct"]))
    [r] = reflect([COIN], oracle=oracle_server.url, model="m", mode="loop", rounds=3,
                  run_dir=tmp_path)
    assert r["answer"] == "The coin is on the bed." and r["stopped_early"]
    assert [s["round"] for s in r["rounds"]] == [0, 1, 2]
    assert r["rounds"][0]["answer"] == "The coin is in the cup."
    assert r["rounds"][1]["verdict"] == "revise" and r["rounds"][2]["verdict"] == "correct"
    assert "answer" not in r["rounds"][2]
    assert len(oracle_server.requests) == 4  # draft, critique, revise, critique
    revise_turn = oracle_server.requests[2]["messages"][-1]["content"]
    assert "The coin is in the cup." in revise_turn and "fell out" in revise_turn
    # the loop's transcript is itself a reply in the format
    p = parse_reflection(r["text"])
    assert p.output == "The coin is on the bed." and len(p.reflections) == 2 and not p.flagged
    with RunStore(tmp_path) as store:
        stages = [row[0] for row in store.db.execute("SELECT stage FROM calls ORDER BY created")]
        [(_, stored)] = list(store.items("reflect"))
    assert sorted(stages) == sorted(["reflect:draft", "reflect:critique", "reflect:revise",
                                     "reflect:critique"])
    assert stored["rounds"] == r["rounds"]
    # a second run answers from the store: no new call
    assert reflect([COIN], oracle=oracle_server.url, model="m", mode="loop", rounds=3,
                   run_dir=tmp_path) == [r]
    assert len(oracle_server.requests) == 4


def test_loop_mode_runs_all_rounds_without_early_stop(oracle_server):
    oracle_server.script(_loop_script([
        "Critique: the cup was turned over.\nVerdict: revise", "Fine. Verdict: correct"]))
    [r] = reflect([COIN], oracle=oracle_server.url, model="m", mode="loop", rounds=2,
                  stop_when_correct=False)
    assert len(oracle_server.requests) == 5 and not r["stopped_early"]
    assert r["answer"] == "Still on the bed." and r["rounds"][2]["answer"] == r["answer"]


def test_verdict_and_question_helpers():
    assert parse_verdict("ok\nVerdict: correct") == "correct"
    assert parse_verdict("Verdict: revise ... on reflection, Verdict - Correct") == "correct"
    assert parse_verdict("looks fine") is None
    assert question_text({"Instruction": "Q1"}) == "Q1"
    assert question_text({"conversations": [{"from": "human", "value": "Q2"}]}) == "Q2"
    assert question_text({"text": "Q3", "id": 1}) == "Q3"
    assert question_text({"instruction": "Q4", "instances": [{"input": "x", "output": ""}]}) \
        == "Q4\n\nx"
    with pytest.raises(Exception, match="no question field"):
        question_text({"answer": "no question"}, "q.jsonl")


def test_cli_single_question_and_file(oracle_server, tmp_path, capsys):
    oracle_server.script(lambda body: COIN_REPLY)
    assert main(["reflect", COIN, "--oracle", oracle_server.url, "--model", "m"]) == 0
    assert capsys.readouterr().out == "The coin is on the bed.\n"
    assert main(["reflect", COIN, "--oracle", oracle_server.url, "--model", "m",
                 "--show-thinking"]) == 0
    shown = capsys.readouterr().out
    assert "--- reflection 1 ---\nTurning the cup upside down" in shown
    assert shown.endswith("--- output ---\nThe coin is on the bed.\n")

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "a", "text": COIN}) + "\n\n"
                         + json.dumps({"prompt": "Q2"}) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["reflect", str(questions), "-o", str(out), "--oracle", oracle_server.url,
                 "--model", "m", "--mode", "loop", "--rounds", "1",
                 "--run-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "1"] and all(r["mode"] == "loop" for r in rows)
    from rtune.judge import read_answers  # the file is judged as it is: final answers only

    assert [(a.instruction, a.output) for a in read_answers([out])] == [
        (r["question"], r["answer"]) for r in rows]
    assert rows[0]["instruction"] == COIN and "<thinking>" not in rows[0]["output"]
    assert (tmp_path / "run" / "rtune.sqlite").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    assert main(["reflect", str(bad), "--oracle", oracle_server.url, "--model", "m"]) == 2
    assert "bad.jsonl, line 2" in capsys.readouterr().err
    assert main(["reflect", "x", "--oracle", oracle_server.url]) == 2  # no --model
    assert main(["reflect", str(tmp_path / "missing.jsonl"), "--oracle", oracle_server.url,
                 "--model", "m"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main(["reflect", "What is in a config.json", "--oracle", oracle_server.url,
                 "--model", "m"]) == 0  # a question, not a file
    assert capsys.readouterr().out == "The coin is on the bed.\n"
    assert main(["reflect", "x", "--oracle", oracle_server.url, "--model", "m",
                 "--mode", "loop", "--rounds", "-1"]) == 2


def test_unreachable_endpoint_stops_the_run_and_is_not_stored(tmp_path):
    from rtune.oracle.base import FatalError

    with pytest.raises(FatalError, match="nothing listens at .*connection refused"):
        reflect(["q"], oracle="http://127.0.0.1:9/v1", model="m", run_dir=tmp_path,
                max_retries=0, timeout=2)
    with RunStore(tmp_path) as store:
        assert store.item_keys("reflect") == set()
        assert store.failure_counts() == {"connection_refused": 1}


# ---------------------------------------------------------------- tokens and training

def _tiny_llama3(tiny_llama_path, folder):
    """The tiny model with the Llama 3 chat tokens added (what a Llama 3.1 tokenizer has)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    tok.add_special_tokens({"additional_special_tokens": [
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_tagged_data_trains_with_llama3_and_the_model_answers_in_the_format(
        oracle_server, tiny_llama_path, tmp_path, capsys):
    """recycle --stages reflection-format -> export the ok candidates -> rtune train --template
    llama3 --reflection-tokens (a tiny model, a few steps) -> rtune reflect --oracle local:."""
    import torch

    torch.manual_seed(0)
    reply = ("<thinking>cup<reflection>flip</reflection>bed</thinking>"
             "<output>On the bed.</output>")
    oracle_server.script(lambda body: reply)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": COIN, "output": "In the cup."}]))
    assert main(["recycle", str(data), "--stages", "reflection-format", "--run-dir",
                 str(tmp_path / "run"), "--oracle", oracle_server.url, "--model", "m",
                 "--no-progress"]) == 0
    sft = tmp_path / "reflect_sft.jsonl"
    assert main(["export", str(tmp_path / "run"), "-o", str(sft), "--kinds", "reflection",
                 "--only-ok"]) == 0
    [row] = [json.loads(line) for line in sft.read_text().splitlines()]
    assert row["system"] == reflection_system_prompt() and row["output"].startswith("<thinking>")

    base = _tiny_llama3(tiny_llama_path, tmp_path / "base")
    out = tmp_path / "sft"
    capsys.readouterr()
    assert main(["train", str(sft), "--model", str(base), "--template", "llama3",
                 "--reflection-tokens", "-o", str(out), "--max-steps", "80",
                 "--learning-rate", "3e-3", "--lr-scheduler", "constant", "--warmup-ratio", "0",
                 "--global-batch-size", "1", "--per-device-batch-size", "1",
                 "--logging-steps", "10", "--save-steps", "1000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # the JSON alone (Trainer logs: stderr)
    assert result["losses"][-1] < result["losses"][0] / 4, result["losses"]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok("</reflection>", add_special_tokens=False)["input_ids"]) == 1
    # the trained system turn is in the prompt: the Llama 3.1 template with our system prompt
    prompt = tok.apply_chat_template([{"role": "system", "content": reflection_system_prompt()},
                                      {"role": "user", "content": COIN}], tokenize=False,
                                     add_generation_prompt=True)
    assert "Cutting Knowledge Date" in prompt and reflection_system_prompt() in prompt

    # format mode on the local model: same system prompt, no worked example
    [r] = reflect([COIN], oracle=f"local:{out}", with_example=False, max_tokens=64,
                  run_dir=tmp_path / "answers")
    assert (r["answer"], r["reflections"], r["flagged"]) == ("On the bed.", ["flip"], False), r
    # loop mode on the local model: every round kept, and resumed from the store
    loop = dict(oracle=f"local:{out}", mode="loop", rounds=1, max_tokens=8,
                stop_when_correct=False, run_dir=tmp_path / "loop")
    [first] = reflect([COIN], **loop)
    assert [s["round"] for s in first["rounds"]] == [0, 1] and "answer" in first["rounds"][1]
    with RunStore(tmp_path / "loop") as store:
        assert store.call_totals()["calls"] == 3
    assert reflect([COIN], **loop) == [first]
    with RunStore(tmp_path / "loop") as store:
        assert store.call_totals()["calls"] == 3


def test_tag_tokens_and_the_special_token_trade_off(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    answer = "<thinking>cup<reflection>flip</reflection>bed</thinking><output>on the bed</output>"
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    before = model.get_input_embeddings().weight.shape[0]
    assert add_reflection_special_tokens(tok, model) == 6
    assert model.get_input_embeddings().weight.shape[0] == before + 6 == len(tok)
    assert add_reflection_special_tokens(tok, model) == 0  # idempotent
    assert len(tok("<reflection>", add_special_tokens=False)["input_ids"]) == 1
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert extract_output(tok.decode(ids, skip_special_tokens=True)) == ("on the bed", False)

    # the trade-off of special=True: a decode that skips special tokens drops the tags
    special = AutoTokenizer.from_pretrained(tiny_llama_path)
    assert add_reflection_special_tokens(special, special=True) == 6
    ids = special(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(AutoTokenizer.from_pretrained(tiny_llama_path)(answer)["input_ids"])
    assert extract_output(special.decode(ids, skip_special_tokens=True))[1]  # no tags left
    assert not extract_output(special.decode(ids))[1]
