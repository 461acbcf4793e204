"""Student scoring: batched scores equal the authors' per-record computation; store, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rtune.errors import ConfigError
from rtune.records import Record
from rtune.score import (
    PASSES,
    Scorer,
    Seq,
    _store_scores,
    record_key,
    score_file,
    score_records,
    score_run,
)
from rtune.score_config import AUTHORS, AUTHORS_REVERSE_PROMPT, REVERSE_PROMPT, ScoreConfig
from rtune.store import STORE_NAME, RunStore

torch = pytest.importorskip("torch")

VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The "
          "assistant gives helpful, detailed, and polite answers to the user's questions. "
          "USER: {instruction} ASSISTANT:")
VICUNA_INPUT = ("A chat between a curious user and an artificial intelligence assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions. "
                "USER: {instruction}\nInput:\n{input} ASSISTANT:")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                "### Response:")


@pytest.fixture(scope="module")
def tiny(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_path)


# ---------------------------------------------------------------- the reference (authors' method)

def _prompt_fn(template: str, tok):
    if template == "chat":
        def chat(instruction: str, input: str) -> str:
            user = f"{instruction}\n\n{input}" if input else instruction
            return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
        return chat
    plain, with_input = {"vicuna": (VICUNA, VICUNA_INPUT), "alpaca": (ALPACA, ALPACA_INPUT)}[
        template]
    return lambda instruction, input: (with_input if input else plain).format(
        instruction=instruction, input=input)


def _whole_text_loss(model, tok, text: str, max_length: int) -> float:
    ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    with torch.no_grad():
        return model(ids, labels=ids.contiguous()).loss.item()


def _part_text_loss(model, tok, text: str, target: str, max_length: int) -> float:
    ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    start_token = len(tok.encode(text[:text.rfind(target)]))
    labels = ids.clone()
    labels[0, :start_token] = -100
    with torch.no_grad():
        return model(ids, labels=labels).loss.item()


def reference(model, tok, rec: Record, template: str, max_length: int, *,
              reverse_prompt: str = REVERSE_PROMPT, join: str = "\n\n") -> dict[str, float]:
    """Four unbatched forward passes per record, as in the authors' scoring script."""
    prompt_of = _prompt_fn(template, tok)
    prompt = prompt_of(rec.instruction, rec.input)
    prompt_len = len(tok.encode(prompt, truncation=True, max_length=max_length))
    reverse = prompt_of(reverse_prompt.replace("{output}", rec.output), "")
    reverse_len = len(tok.encode(reverse, truncation=True, max_length=max_length))
    question = rec.instruction + join + rec.input if rec.input else rec.instruction
    return {
        "Q_direct": _whole_text_loss(model, tok, question, max_length - reverse_len + 1),
        "A_direct": _whole_text_loss(model, tok, rec.output, max_length - prompt_len + 1),
        "Q_condition": _part_text_loss(model, tok, reverse + question, question, max_length),
        "A_condition": _part_text_loss(model, tok, prompt + rec.output, rec.output, max_length),
    }


def _answer_filling(tok, template: str, max_length: int, room: int) -> str:
    """An answer whose reverse prompt leaves about ``room`` tokens of max_length."""
    prompt_of = _prompt_fn(template, tok)
    words = "the sea is wide and blue it sings to me and you".split()
    answer = ""
    i = 0
    while True:
        longer = (answer + " " + words[i % len(words)]).strip()
        reverse = prompt_of(REVERSE_PROMPT.replace("{output}", longer), "")
        if len(tok.encode(reverse)) > max_length - room:
            return answer
        answer, i = longer, i + 1


def _records(tok, template: str, max_length: int) -> list[Record]:
    recs = [
        Record("What is the capital of France?", "Paris."),
        Record("Give three tips for staying healthy.", "Eat well, exercise and sleep well. " * 3,
               input="for a student"),
        Record("Explain why the sky is blue.", "Sunlight scatters off air molecules."),
        # the end-of-turn token inside the target equals the pad token: it must be scored
        Record("Say goodbye.", "Bye.<|im_end|> See you soon<|im_end|>"),
        Record("Write a long poem about the sea.", "The sea is wide and blue. " * 40),
        Record("x", "y z"),
    ]
    if max_length < 1000:
        # Q_condition keeps 3 instruction tokens (the question is cut); A_direct is cut too
        recs.append(Record("Summarise the following text in one sentence please.",
                           _answer_filling(tok, template, max_length, 3)))
    return recs


@pytest.mark.parametrize("template,max_length,batch_size,prefix_cache", [
    ("vicuna", 2048, 3, False), ("vicuna", 320, 4, True), ("alpaca", 320, 1, None),
    ("chat", 2048, 8, True),
])
def test_batched_equals_reference(tiny, template, max_length, batch_size, prefix_cache):
    model, tok = tiny
    recs = _records(tok, template, max_length)
    config = ScoreConfig(student="tiny", template=template, max_length=max_length,
                         batch_size=batch_size, prefix_cache=prefix_cache)
    got = {r["index"]: r for r in score_records(recs, config, model=model, tokenizer=tok)}
    assert sorted(got) == list(range(len(recs)))
    undefined = truncated = 0
    for i, rec in enumerate(recs):
        ref = reference(model, tok, rec, template, max_length)
        mine = got[i]
        json.dumps(mine, allow_nan=False)  # never a NaN in a stored result
        truncated += mine["truncated"]
        for name in PASSES:
            if math.isnan(ref[name]):  # the authors' code yields NaN: we give null + reason
                undefined += 1
                assert mine[f"loss_{name}"] is None and mine[f"ppl_{name}"] is None
                assert name in mine["reason"]
            else:
                assert mine[f"loss_{name}"] == pytest.approx(ref[name], abs=1e-5), (i, name)
                assert mine[f"ppl_{name}"] == pytest.approx(math.exp(ref[name]), rel=1e-5)
        for ratio, part in (("ifd", "A"), ("rifd", "Q")):
            cond, direct = ref[f"{part}_condition"], ref[f"{part}_direct"]
            if math.isnan(cond) or math.isnan(direct):
                assert mine[f"{ratio}_ppl"] is None and mine[f"{ratio}_loss"] is None
            else:
                assert mine[f"{ratio}_ppl"] == pytest.approx(math.exp(cond - direct), abs=1e-5)
                assert mine[f"{ratio}_loss"] == pytest.approx(cond / direct, abs=1e-5)
    if max_length < 1000:  # the edge cases really happened
        assert truncated >= 2 and undefined >= 1
        last = got[len(recs) - 1]
        assert last["truncated"] and last["loss_Q_condition"] is not None
    else:  # only the one-token instruction "x" has nothing to predict
        assert truncated == 0 and undefined == 1
        assert got[5]["reason"] == "Q_direct: a single token, nothing to predict"


def test_prefix_cache_changes_nothing(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr("rtune.score.PAD_LIMIT", 100.0)  # full batches: one head per pass
    recs = _records(tok, "vicuna", 2048)
    cached = Scorer(ScoreConfig(student="tiny", batch_size=4, prefix_cache=True), model, tok)
    plain = Scorer(ScoreConfig(student="tiny", batch_size=4, prefix_cache=False), model, tok)
    a, b = cached.score(recs), plain.score(recs)
    assert len(cached._prefix_kv) == 2  # the heads of p(x) and p(r(y)) were reused
    assert not plain._prefix_kv
    for x, y in zip(a, b):
        for field in ("loss_A_condition", "loss_Q_condition", "ifd_ppl", "rifd_ppl"):
            if y[field] is not None:
                assert x[field] == pytest.approx(y[field], abs=1e-6)


def test_a_sequence_shared_by_candidates_runs_once(tiny):
    model, tok = tiny
    rows: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        scorer = Scorer(ScoreConfig(student="tiny", batch_size=8), model, tok)
        question, answer = "Explain why the sky is blue.", "Sunlight scatters off air molecules."
        orig = Record(question, answer, source_index=0, kind="orig")
        res = Record(question, "Blue light scatters most.", source_index=0, kind="res")
        ins = Record(question, answer, source_index=0, kind="ins")  # a fallback: orig again
        got = scorer.score([orig, res, ins])
        # orig: 4 sequences; res: 3 new (its instruction alone is orig's); ins: none
        assert sum(rows) == 7
        again = scorer.score([res])  # an earlier call's losses are reused too
        assert sum(rows) == 7
    finally:
        hook.remove()
    assert got[2] == got[0] and again[0] == got[1]
    for rec, scores in zip((orig, res), got):
        ref = reference(model, tok, rec, "vicuna", 2048)
        for name in PASSES:
            assert scores[f"loss_{name}"] == pytest.approx(ref[name], abs=1e-5), name


def test_authors_settings_equal_their_reference(tiny):
    """The authors' r(y) and x = instruction + input with nothing between (their
    data_analysis.py), against the same four unbatched passes."""
    model, tok = tiny
    rec = Record("Give three tips for staying healthy.", "Eat well, exercise and sleep well.",
                 input="for a student")
    ours, theirs = ScoreConfig(student="tiny"), ScoreConfig(student="tiny", **AUTHORS)
    assert Scorer(ours, model, tok).join(rec.instruction, rec.input) == \
        "Give three tips for staying healthy.\n\nfor a student"
    assert Scorer(theirs, model, tok).join(rec.instruction, rec.input) == \
        "Give three tips for staying healthy.for a student"
    got = next(score_records([rec], theirs, model=model, tokenizer=tok))
    ref = reference(model, tok, rec, "vicuna", 2048, reverse_prompt=AUTHORS_REVERSE_PROMPT,
                    join="")
    for name in PASSES:
        assert got[f"loss_{name}"] == pytest.approx(ref[name], abs=1e-5), name
    default = next(score_records([rec], ours, model=model, tokenizer=tok))
    assert got["loss_Q_direct"] != pytest.approx(default["loss_Q_direct"], abs=1e-4)
    assert got["loss_A_condition"] == pytest.approx(default["loss_A_condition"], abs=1e-6)
    assert got["score_settings"] == theirs.fingerprint() != ours.fingerprint()


def test_chat_templates_join_with_the_setting(tiny):
    model, tok = tiny
    scorer = Scorer(ScoreConfig(student="tiny", template="chat", input_join=" | "), model, tok)
    assert "Name a colour. | one word" in scorer.prompt("Name a colour.", "one word")


def test_empty_targets_get_reasons(tiny):
    model, tok = tiny
    recs = [Record("Say something.", ""), Record("", "An answer without a question."),
            Record("Say something.", "   ")]
    out = {r["index"]: r for r in score_records(recs, ScoreConfig(student="tiny"),
                                                model=model, tokenizer=tok)}
    for i in (0, 2):
        assert out[i]["reason"] == "empty answer"
        assert all(out[i][f] is None for f in ("ifd_ppl", "rifd_ppl", "loss_A_direct"))
    assert out[1]["ifd_ppl"] is not None and out[1]["loss_A_condition"] is not None
    assert out[1]["rifd_ppl"] is None and out[1]["ppl_Q_direct"] is None
    assert "empty instruction" in out[1]["reason"]
    assert json.dumps(out, allow_nan=False)


def test_config_errors():
    with pytest.raises(ConfigError, match="template"):
        ScoreConfig(template="nope").validate()
    with pytest.raises(ConfigError, match="output"):
        ScoreConfig(reverse_prompt="no placeholder").validate()
    assert ScoreConfig(template="wiz").template == "wizardlm"


# ---------------------------------------------------------------- store and resume

def _make_run(run_dir: Path, n_sources: int) -> list[Record]:
    cands = []
    with RunStore(run_dir) as store:
        for i in range(n_sources):
            orig = Record(f"Question {i}: what is {i} plus {i}?",
                          f"The answer is {2 * i}. " * (1 + i % 7), source_index=i)
            for kind in ("orig", "ins", "res", "both"):
                cand = orig if kind == "orig" else orig.derive(
                    kind, instruction=orig.instruction + f" Explain ({kind}).",
                    output=orig.output + f" Because {kind}." * (i % 3))
                store.put_candidate(cand)
                cands.append(cand)
    return cands


def test_score_run_stores_and_skips(tiny, tmp_path):
    model, tok = tiny
    cands = _make_run(tmp_path / "run", 3)
    config = ScoreConfig(student="tiny", batch_size=4)
    summary = score_run(tmp_path / "run", config, model=model, tokenizer=tok)
    assert summary["scored_now"] == len(cands) == summary["scored_total"]
    with RunStore(tmp_path / "run") as store:
        items = store.scores()
    assert set(items) == {(c.source_index, c.kind) for c in cands}
    assert all(v["ifd_ppl"] is not None and v["student"] == "tiny" for v in items.values())
    assert score_run(tmp_path / "run", config, model=model, tokenizer=tok)["scored_now"] == 0
    with pytest.raises(ConfigError, match="--force"):
        score_run(tmp_path / "run", ScoreConfig(student="tiny", template="alpaca"),
                  model=model, tokenizer=tok)
    again = score_run(tmp_path / "run", ScoreConfig(student="tiny", template="alpaca",
                                                    force=True), model=model, tokenizer=tok)
    assert again["scored_now"] == len(cands)


def test_other_reverse_prompt_or_join_is_refused(tiny, tmp_path):
    model, tok = tiny
    _make_run(tmp_path / "run", 2)
    config = ScoreConfig(student="tiny", batch_size=4)
    score_run(tmp_path / "run", config, model=model, tokenizer=tok)
    with RunStore(tmp_path / "run") as store:
        assert {r["score_settings"] for r in store.scores().values()} == {config.fingerprint()}
        assert store.get_meta("score_settings") == {config.fingerprint(): config.identity()}
    for change, name in (({"input_join": ""}, "input_join"),
                         ({"reverse_prompt": AUTHORS_REVERSE_PROMPT}, "reverse_prompt")):
        other = ScoreConfig(student="tiny", batch_size=4, **change)
        assert other.fingerprint() != config.fingerprint()
        with pytest.raises(ConfigError, match=f"{name} .* -> .*--force"):
            score_run(tmp_path / "run", other, model=model, tokenizer=tok)


def test_a_process_of_many_scores_whole_sources(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cands = _make_run(tmp_path / "run", 5)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun / accelerate set them for rank 1
    monkeypatch.setenv("RANK", "1")
    with RunStore(tmp_path / "run") as store:
        done, _ = _store_scores(store, cands, ScoreConfig(student="tiny", device="cpu"),
                                progress=None, model=model, tokenizer=tok)
        keys = set(store.scores())
    assert done == 8
    assert keys == {record_key(c) for c in cands if c.source_index in (1, 3)}


def test_score_file_writes_scores(tiny, tmp_path):
    model, tok = tiny
    data = [{"instruction": "What is 2+2?", "input": "", "output": "4"},
            {"instruction": "Name a colour.", "input": "one word", "output": "Blue."}]
    src = tmp_path / "data.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "scored.jsonl"
    summary = score_file(src, ScoreConfig(student="tiny"), out, model=model, tokenizer=tok)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in rows] == ["4", "Blue."] and summary["scored_total"] == 2
    assert rows[1]["ifd_ppl"] is not None and rows[1]["kind"] == "orig"
    assert not any(p.name.endswith(".rtune-score") for p in tmp_path.iterdir())
    first = score_file(src, ScoreConfig(student="tiny"), out, limit=1, model=model,
                       tokenizer=tok)
    assert [json.loads(line)["output"] for line in out.read_text().splitlines()] == ["4"]
    assert first["scored_total"] == 1
    with pytest.raises(ConfigError, match="--limit"):
        score_file(src, ScoreConfig(student="tiny"), out, limit=0, model=model, tokenizer=tok)


def _stored(run_dir: Path) -> dict[tuple[int, str], dict[str, Any]]:
    """The score rows, read with plain sqlite3 (not through the store)."""
    db = sqlite3.connect(f"file:{run_dir / STORE_NAME}?mode=ro", uri=True, timeout=30)
    try:
        cur = db.execute("SELECT * FROM scores")
        cols = [c[0] for c in cur.description]
        return {(row[0], row[1]): dict(zip(cols, row)) for row in cur}
    except sqlite3.OperationalError:  # the table is not created yet
        return {}
    finally:
        db.close()


def test_resume_after_kill(tiny, tiny_llama_path, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cands = _make_run(run_dir, 40)
    cmd = [sys.executable, "-m", "rtune", "score", str(run_dir), "--student",
           str(tiny_llama_path), "--batch-size", "2", "--max-length", "512", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_stored(run_dir)) < 6:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    at_kill = _stored(run_dir)
    assert 6 <= len(at_kill) < len(cands), "killed too late to test resuming"
    from rtune.cli import main

    assert main(cmd[3:]) == 0  # the same command, rerun (in this process: no second start-up)
    assert f"scored {len(cands) - len(at_kill)} candidates now" in capsys.readouterr().out
    final = _stored(run_dir)
    assert set(final) == {(c.source_index, c.kind) for c in cands}
    assert all(final[k] == v for k, v in at_kill.items())  # finished work was not redone
    model, tok = tiny
    config = ScoreConfig(student=str(tiny_llama_path), batch_size=2, max_length=512)
    for row in score_records(cands, config, model=model, tokenizer=tok):
        stored = final[row["source_index"], row["kind"]]
        for field in ("loss_A_direct", "loss_A_condition", "loss_Q_direct",
                      "loss_Q_condition", "ifd_ppl", "rifd_ppl"):
            assert stored[field] == pytest.approx(row[field], abs=1e-6), field


def test_data_parallel_shares_and_main_process_writes(tiny, tiny_llama_path, tmp_path):
    """Two processes under torchrun: fixed disjoint shares, one output file with every record,
    the same numbers as one process."""
    data = [{"instruction": f"Question {i}: what is {i} plus {i}?", "input": "",
             "output": f"The answer is {2 * i}. " * (1 + i % 4)} for i in range(9)]
    src = tmp_path / "data.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "scored.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "rtune", "score", str(src),
           "--student", str(tiny_llama_path), "--device", "cpu", "-o", str(out),
           "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])  # only the main process prints
    assert summary["scored_total"] == 9 and summary["scored_now"] == 5  # rank 0: records 0,2,..
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in rows] == [d["output"] for d in data]
    model, tok = tiny
    recs = [Record(d["instruction"], d["output"], source_index=i) for i, d in enumerate(data)]
    config = ScoreConfig(student=str(tiny_llama_path))
    for row in score_records(recs, config, model=model, tokenizer=tok):
        for field in ("loss_A_condition", "loss_Q_condition", "ifd_ppl", "rifd_ppl"):
            assert rows[row["index"]][field] == pytest.approx(row[field], abs=1e-5), field
    assert not any(p.name.endswith(".rtune-score") for p in tmp_path.iterdir())


def test_batches_limit_padding(tiny):
    model, tok = tiny
    scorer = Scorer(ScoreConfig(student="tiny", batch_size=4), model, tok)
    seen: list[list[int]] = []
    real = scorer._batch_losses
    scorer._batch_losses = lambda seqs: seen.append([len(s.ids) for s in seqs]) or real(seqs)
    lengths = [10, 11, 11, 12, 30, 31, 90, 10, 10]
    out = scorer.losses([Seq(list(range(3, 3 + n)), 1) for n in lengths])
    assert all(math.isfinite(v) for v in out)
    assert sorted(map(sorted, seen)) == [[10, 10, 10, 11], [11, 12], [30, 31], [90]]
    for batch in seen:  # padding stays within the limit
        assert max(batch) * len(batch) <= 1.15 * sum(batch)
