"""Test sets (the five real formats) and `rtune generate`: a tiny local model (batched greedy,
its saved chat template), the loopback OpenAI-compatible server (resume, failures), AlpacaEval
export, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oracle_server import Fault
from rtune.cli import main
from rtune.errors import ConfigError, InputError
from rtune.generate import generate
from rtune.store import RunStore
from rtune.testsets import load_test_set
from rtune.testsets import test_set_name as set_name

# ---------------------------------------------------------------- the five real test sets

SETS = {  # file -> (name, questions, how to read the question from the raw record)
    "vicuna_test_set.jsonl": ("vicuna", 80, lambda d: d["text"]),
    "koala_test_set.jsonl": ("koala", 180, lambda d: d["prompt"]),
    "wizardlm_test_set.jsonl": ("wizardlm", 218, lambda d: d["Instruction"]),
    "sinstruct_test_set.jsonl": ("sinstruct", 252, lambda d: d["instruction"] + (
        "\n\n" + d["instances"][0]["input"] if d["instances"][0]["input"].strip() else "")),
    "lima_test_set.jsonl": ("lima", 300, lambda d: d["conversations"]),
}


@pytest.mark.parametrize("filename", sorted(SETS))
def test_each_real_test_set_loads_by_its_own_fields(shared_data, filename):
    name, count, question = SETS[filename]
    path = shared_data / filename
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    qs = load_test_set(path)
    assert len(qs) == count == len(raw)
    assert {q.test_set for q in qs} == {name} and set_name(path) == name
    assert [q.instruction for q in qs] == [question(d) for d in raw]
    assert len({q.id for q in qs}) == count  # ids unique within the set


def test_sinstruct_input_is_part_of_the_question(shared_data):
    qs = load_test_set(shared_data / "sinstruct_test_set.jsonl")
    raw = json.loads((shared_data / "sinstruct_test_set.jsonl").read_text().splitlines()[0])
    assert raw["instances"][0]["input"] in qs[0].instruction
    assert qs[0].id == raw["id"]


def test_test_set_names_and_alpaca_json(tmp_path):
    assert set_name("out/recycled.koala.jsonl") == "koala"
    assert set_name("vicuna_questions.json") == "vicuna"
    alpaca = tmp_path / "my-eval.json"
    alpaca.write_text(json.dumps([{"instruction": "Sort these.", "input": "3 1 2",
                                   "output": "1 2 3"}, {"instruction": "Say hi.", "input": ""}]))
    qs = load_test_set(alpaca)
    assert [q.instruction for q in qs] == ["Sort these.\n\n3 1 2", "Say hi."]
    assert [q.key for q in qs] == ["my-eval/0", "my-eval/1"]


@pytest.mark.parametrize(("content", "line", "record", "field", "message"), [
    ('{"id": 1, "question_text": "Hi?"}\n', 1, 0, None, "no question field"),
    ('{"text": "ok"}\n{"text": "   "}\n', 2, 1, "text", "empty question"),
    ('{"text": "ok"}\n{"text": 5}\n', 2, 1, "text", "expected a string"),
    ('{"text": "ok"}\n{"text": "a"\n', 2, None, None, "malformed JSON"),
    ('{"instruction": "Do.", "instances": "x"}\n', 1, 0, "instances", "list"),
    ('{"conversations": []}\n', 1, 0, "conversations", "list of turns"),
    ('["a question"]\n', None, 0, None, "expected a JSON object"),
    ('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', 2, 1, "id", "duplicate"),
    ("\n\n", None, None, None, "no questions"),
])
def test_bad_test_sets_name_file_record_and_field(tmp_path, content, line, record, field,
                                                  message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        load_test_set(path)
    err = e.value
    assert (err.path, err.line, err.record, err.field) == (str(path), line, record, field)
    assert message in str(err) and str(path) in str(err)


# ---------------------------------------------------------------- a local model


QUESTIONS = ["What is the capital of France?", "Give three tips for staying healthy.",
             "Write a short poem about the sea.", "Explain why the sky is blue.",
             "What is 2 + 2?"]


def write_set(path: Path, questions=QUESTIONS, field="text") -> Path:
    path.write_text("".join(json.dumps({"question_id": i + 1, field: q}) + "\n"
                            for i, q in enumerate(questions)))
    return path


def greedy_one_at_a_time(model_dir: Path, questions: list[str], max_new: int) -> list[str]:
    """The expected answers, computed here: the saved chat template, plain greedy generate,
    one question at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for question in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        answers.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def test_local_model_batched_greedy_with_its_chat_template(tiny_llama_path, tmp_path):
    test_set = write_set(tmp_path / "vicuna.jsonl")
    out, alpaca = tmp_path / "out" / "tiny.vicuna.jsonl", tmp_path / "out" / "alpaca_eval.json"
    code = main(["generate", str(tiny_llama_path), "--test-set", str(test_set), "-o", str(out),
                 "--run-dir", str(tmp_path / "run"), "--max-tokens", "12", "--batch-size", "4",
                 "--alpaca-eval", str(alpaca), "--no-progress"])
    assert code == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == QUESTIONS
    assert [r["question_id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["output"] for r in rows] == greedy_one_at_a_time(tiny_llama_path, QUESTIONS, 12)
    for r in rows:
        assert r["generator"] == tiny_llama_path.name and r["test_set"] == "vicuna"
        assert r["settings"] == {"model": tiny_llama_path.name, "temperature": 0.0,
                                 "top_p": 1.0, "max_tokens": 12, "system": None}
    assert any(r["output"] for r in rows)
    exported = json.loads(alpaca.read_text())
    assert exported == [{"instruction": r["instruction"], "output": r["output"],
                         "generator": tiny_llama_path.name, "dataset": "vicuna"} for r in rows]
    with RunStore(tmp_path / "run") as store:
        stored = dict(store.items("generations"))
        assert store.get_meta("generate")["settings"]["max_tokens"] == 12
    assert sorted(stored) == [f"vicuna/{i}" for i in range(1, 6)]
    assert all(v["finish_reason"] in ("stop", "length") for v in stored.values())


# ---------------------------------------------------------------- an endpoint


def echo(body):
    return f"Answer to: {body['messages'][-1]['content']}"


def test_endpoint_generation_resumes_and_regenerates_on_new_settings(oracle_server, tmp_path):
    vicuna = write_set(tmp_path / "vicuna_test_set.jsonl")
    koala = write_set(tmp_path / "koala_test_set.jsonl", [q.upper() for q in QUESTIONS[:3]],
                      field="prompt")
    oracle_server.script(echo)
    out = tmp_path / "served.jsonl"
    kw = {"model": "served-x", "run_dir": tmp_path / "run", "system": "Be brief."}
    first = generate(oracle_server.url, [vicuna, koala], out, **kw)
    assert len(oracle_server.requests) == 8 and first["written"] == 8 and first["failed"] == []
    body = oracle_server.requests[0]
    assert body["model"] == "served-x" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["test_set"] for r in rows] == ["vicuna"] * 5 + ["koala"] * 3
    assert all(r["output"] == f"Answer to: {r['instruction']}" for r in rows)
    assert all(r["generator"] == "served-x" and r["settings"]["system"] == "Be brief."
               for r in rows)
    again = generate(oracle_server.url, [vicuna, koala], out, **kw)  # resume: nothing to do
    assert len(oracle_server.requests) == 8 and again["generated"] == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows
    generate(oracle_server.url, [koala], out, **{**kw, "max_tokens": 64})  # new settings
    assert len(oracle_server.requests) == 11
    assert all(b["max_tokens"] == 64 for b in oracle_server.requests[8:])
    code = main(["generate", oracle_server.url, "--model", "served-x", "--limit", "2",
                 "--test-set", str(vicuna), "--test-set", str(koala), "-o", str(out),
                 "--run-dir", str(tmp_path / "run2"), "--no-progress"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 0 and len(oracle_server.requests) == 15  # the first 2 of each set
    assert [r["instruction"] for r in rows] == QUESTIONS[:2] + [q.upper() for q in QUESTIONS[:2]]


def test_endpoint_failures_are_reported_then_retried(oracle_server, tmp_path):
    test_set = write_set(tmp_path / "wizardlm.jsonl", field="Instruction")

    def refuses_question_3(body):
        if "sky" in body["messages"][-1]["content"]:
            return Fault(status=400)
        return echo(body)

    oracle_server.script(refuses_question_3)
    out = tmp_path / "out.jsonl"
    code = main(["generate", oracle_server.url, "--model", "m", "--test-set", str(test_set),
                 "-o", str(out), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and "Explain why the sky is blue." not in [r["instruction"]
                                                                      for r in rows]
    oracle_server.script(echo)
    summary = generate(oracle_server.url, [test_set], out, model="m", run_dir=tmp_path / "run")
    assert summary["generated"] == 1 and summary["written"] == 5 and summary["failed"] == []
    assert len(oracle_server.requests) == 6


def test_output_only_keeps_the_output_part(oracle_server, tmp_path):
    test_set = write_set(tmp_path / "lima.jsonl", QUESTIONS[:2], field="conversations")
    oracle_server.script_sequence(
        ["<thinking>hmm<reflection>fix</reflection></thinking><output>Paris.</output>"],
        then=lambda body: "no tags here")
    out = tmp_path / "out.jsonl"
    summary = generate(oracle_server.url, [test_set], out, model="m", output_only=True,
                       run_dir=tmp_path / "run", options=None)
    rows = {r["instruction"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary["flagged"] == 1
    outputs = sorted((r["output"], r["flagged"]) for r in rows.values())
    assert outputs == [("Paris.", False), ("no tags here", True)]
    assert any(r["raw_output"].startswith("<thinking>") for r in rows.values())


def test_generate_config_errors(oracle_server, tmp_path):
    test_set = write_set(tmp_path / "vicuna.jsonl")
    with pytest.raises(ConfigError, match="--model is required"):
        generate(oracle_server.url, [test_set], tmp_path / "o.jsonl", run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="--limit"):
        generate(oracle_server.url, [test_set], tmp_path / "o.jsonl", model="m", limit=0)
    with pytest.raises(ConfigError, match="max-tokens"):
        generate(oracle_server.url, [test_set], tmp_path / "o.jsonl", model="m", max_tokens=0)
    with pytest.raises(InputError, match="already taken"):
        generate(oracle_server.url, [test_set, test_set], tmp_path / "o.jsonl", model="m")
    with pytest.raises(InputError, match="not found"):
        generate(oracle_server.url, [tmp_path / "nope.jsonl"], tmp_path / "o.jsonl", model="m")
    assert oracle_server.requests == []
