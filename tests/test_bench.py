"""rtune bench: lm-evaluation-harness on custom local tasks (YAML + JSONL written here), offline.

The tiny random Llama runs through lm-eval's hf backend (accuracy checked against our own
log-likelihood argmax); a scripted lm-eval LM with Reflection-style generations shows what
--output-only changes in what is scored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from rtune.bench import bench, format_markdown, output_only_filter  # noqa: E402
from rtune.cli import main  # noqa: E402
from rtune.errors import ConfigError  # noqa: E402

MC_DOCS = [{"q": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 7), "blue"],
            "label": i % 3} for i in range(6)]
GEN_DOCS = [{"q": f"How many apples are {i} and {i + 2} apples?", "a": str(2 * i + 2)}
            for i in range(5)]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """The JSON builder's cache goes to tmp_path, not the user's Hugging Face cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def write_tasks(folder: Path) -> Path:
    """A multiple-choice task and two generate-until tasks (one with a regex answer filter,
    like gsm8k's), on local JSONL files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (folder / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in GEN_DOCS))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n" \
             "test_split: test\ndoc_to_text: \"{{{{q}}}}\"\n"
    (folder / "mc.yaml").write_text(
        "task: rtune_mc\n" + common.format(data=folder / "mc.jsonl")
        + "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    gen = ("output_type: generate_until\ndoc_to_target: a\ngeneration_kwargs:\n"
           "  until: [\"\\n\\n\"]\n  max_gen_toks: 6\n  do_sample: false\n"
           "metric_list:\n  - metric: exact_match\n")
    (folder / "gen.yaml").write_text(
        "task: rtune_gen\n" + common.format(data=folder / "gen.jsonl") + gen)
    (folder / "gen_regex.yaml").write_text(
        "task: rtune_gen_regex\n" + common.format(data=folder / "gen.jsonl") + gen
        + "filter_list:\n  - name: strict-match\n    filter:\n"
        "      - function: regex\n        regex_pattern: \"The answer is (\\\\d+)\"\n"
        "      - function: take_first\n")
    (folder / "group.yaml").write_text(
        "group: rtune_group\ntask:\n  - rtune_gen\n  - rtune_gen_regex\n"
        "aggregate_metric_list:\n  - metric: exact_match\n")
    return folder


def row(summary: dict, task: str, metric: str) -> dict:
    (r,) = [r for r in summary["rows"] if r["task"] == task and r["metric"] == metric]
    return r


def argmax_accuracy(model_dir: Path, docs: list[dict]) -> float:
    """Multiple-choice accuracy computed here: sum of the choice's token log-probs after the
    question (lm-eval's default target delimiter ' '), argmax over the choices."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    for d in docs:
        scores = []
        for choice in d["choices"]:
            context = tok.encode(d["q"], add_special_tokens=False)
            whole = tok.encode(d["q"] + " " + choice, add_special_tokens=False)
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(logp[i - 1, whole[i]].item()
                              for i in range(len(context), len(whole))))
        right += max(range(len(scores)), key=scores.__getitem__) == d["label"]
    return right / len(docs)


def test_bench_tiny_llama_on_local_tasks(tiny_llama_path, tmp_path, capsys):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_llama_path), "--tasks", "rtune_mc,rtune_gen",
                 "--include-path", str(tasks), "--batch-size", "4", "--device", "cpu",
                 "--bootstrap-iters", "0", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.read_text())
    mc = row(summary, "rtune_mc", "acc")
    assert mc["n"] == len(MC_DOCS) and mc["filter"] == "none" and mc["scored"] == "log-likelihood"
    assert mc["value"] == pytest.approx(argmax_accuracy(tiny_llama_path, MC_DOCS))
    gen = row(summary, "rtune_gen", "exact_match")
    assert gen["n"] == len(GEN_DOCS) and gen["scored"] == "whole text"
    assert 0.0 <= gen["value"] <= 1.0
    assert summary["settings"]["dtype"] == "float32" and summary["model"] == tiny_llama_path.name
    assert "| rtune_mc | 6 | 0 | none | acc | " + f"{mc['value']:.4f}" in printed
    assert "| rtune_gen | 5 |" in printed
    # --limit and the markdown summary file
    md = tmp_path / "bench.md"
    assert main(["bench", str(tiny_llama_path), "--tasks", "rtune_mc", "--include-path",
                 str(tasks), "--limit", "2", "--device", "cpu", "--bootstrap-iters", "0",
                 "-o", str(md)]) == 0
    assert "| rtune_mc | 2 | 0 | none | acc |" in md.read_text()


class ReflectionLM(LM):
    """Answers like a Reflection-style model: a wrong guess while thinking, the right answer
    in <output>; the last question without any tags. Multiple choice: prefers choice 0."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        replies = []
        for req in requests:
            question = req.args[0]
            self.prompts.append(question)
            d = next(d for d in GEN_DOCS if d["q"] in question)
            right, wrong = d["a"], str(int(d["a"]) + 1)
            if d is GEN_DOCS[-1]:
                replies.append(f"The answer is {right}")
            else:
                replies.append(f"<thinking>The answer is {wrong}.<reflection>No, recount."
                               f"</reflection></thinking>\n<output>The answer is {right}</output>")
        return replies

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, continuation = req.args
            d = next(d for d in MC_DOCS if d["q"] in context)
            out.append((0.0 if continuation.strip() == d["choices"][0] else -5.0, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_output_only_scores_the_output_part(tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    kw = {"include_path": tasks, "bootstrap_iters": 0}
    names = "rtune_mc,rtune_group"  # the group holds both generate-until tasks
    whole = bench(ReflectionLM(), names, **kw)
    only = bench(ReflectionLM(), names, output_only=True, log_samples=True, **kw)
    n = len(GEN_DOCS)
    # exact match on the whole text: never; on the <output> part: never either (it says
    # "The answer is N"), but the regex task reads the first "The answer is N": the thinking's
    # wrong guess in the whole text, the right answer in the <output> part
    assert row(whole, "rtune_gen_regex", "exact_match")["value"] == pytest.approx(1 / n)
    assert row(only, "rtune_gen_regex", "exact_match")["value"] == pytest.approx(1.0)
    assert row(only, "rtune_gen_regex", "exact_match")["scored"] == "<output>"
    assert row(whole, "rtune_gen", "exact_match")["value"] == 0.0
    group = [r for r in only["rows"] if r["task"] == "rtune_group"]
    assert group and all(r["scored"] == "group" and r["n"] == 2 * n for r in group)
    # the filters saw each generation once; the untagged one is counted
    assert only["output_only_flagged"] == {
        "rtune_gen": {"flagged": 1, "generations": n},
        "rtune_gen_regex": {"flagged": 1, "generations": n}}
    assert whole["output_only_flagged"] == {}
    # multiple choice is unaffected: choice 0 is right for labels 0 (i = 0, 3)
    expected_mc = sum(d["label"] == 0 for d in MC_DOCS) / len(MC_DOCS)
    for s in (whole, only):
        assert row(s, "rtune_mc", "acc")["value"] == pytest.approx(expected_mc)
        assert row(s, "rtune_mc", "acc")["scored"] == "log-likelihood"
    assert "1/5 generations had no <output> part" in format_markdown(only)
    # the samples keep the raw generation and what was scored
    sample = only["samples"]["rtune_gen_regex"][0]
    assert sample["resps"][0][0].startswith("<thinking>")
    assert sample["filtered_resps"][0] == GEN_DOCS[sample["doc_id"]]["a"]


def test_output_only_filter_directly():
    f = output_only_filter()
    resps = [["<thinking>maybe 3</thinking><output>4</output>", "just 5"],
             ["<output>  six </output>"], ["<thinking>no output tag"]]
    assert f().apply(resps, [{}, {}, {}]) == [["4", "just 5"], ["six"],
                                              ["<thinking>no output tag"]]
    assert (f.flagged, f.seen) == (2, 4)


def test_bench_errors(tmp_path, tiny_llama_path, monkeypatch):
    tasks = write_tasks(tmp_path / "tasks")
    with pytest.raises(ConfigError, match="unknown lm-eval task.*rtune_nope"):
        bench(ReflectionLM(), "rtune_mc,rtune_nope", include_path=tasks)
    with pytest.raises(ConfigError, match="--include-path .*missing not found"):
        bench(ReflectionLM(), "rtune_mc", include_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="not found"):
        bench(str(tmp_path / "no-model"), "rtune_mc", include_path=tasks)
    with pytest.raises(ConfigError, match="no task"):
        bench(ReflectionLM(), " , ")
    assert main(["bench", str(tiny_llama_path), "--tasks", "rtune_mc", "--include-path",
                 str(tasks), "--log-samples", "-o", str(tmp_path / "s.md")]) == 2
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'rtune\[bench\]'"):
        bench(str(tiny_llama_path), "rtune_mc", include_path=tasks)
