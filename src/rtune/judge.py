"""Pairwise judging: two models' answers to the same test questions, judged in both orders.

Every judgment (raw judge text, parsed scores, the request's cache key) is committed to the run
store (namespace ``judgments``), so a rerun pays for nothing that is done. A reply whose score
line cannot be read is re-asked once, then recorded as a failure; it never becomes a tie.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .cli_fields import settings_field
from .endpoint_config import EndpointConfig
from .errors import ConfigError, InputError
from .extras import missing
from .generate import generator_name
from .guided import JUDGE, GuidedSpec, check_guided, guided_default, guided_spec
from .io import json_items, write_text_atomic
from .judge_parse import Outcome, Scores, outcome, parse_scores, summarize
from .oracle import PermanentError, TransientError
from .oracle.base import ChatRequest
from .oracle.engine import check_settings
from .progress import RunProgress
from .prompts import Prompt, load_prompt
from .store import RunStore
from .testsets import test_set_name

NAMESPACE = "judgments"
ORDERS = ("ab", "ba")  # ab: side A is assistant 1; ba: answers swapped


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    test_set: str
    question_id: str | None
    instruction: str
    output: str
    generator: str
    path: str
    line: int | None


def read_answers(paths: Sequence[str | Path], *, allow_empty: bool = False) -> list[Answer]:
    """Answers from ``rtune generate`` JSONL files or AlpacaEval-style JSON lists."""
    answers: list[Answer] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(str(p), "answers file not found")
        for index, line, item in json_items(p):
            answers.append(_answer(item, p, line, index, allow_empty))
    return answers


def _answer(item: Any, p: Path, line: int | None, index: int, allow_empty: bool) -> Answer:
    def bad(message: str, field: str | None = None) -> InputError:
        return InputError(str(p), message, line=line, record=index, field=field)

    if not isinstance(item, dict):
        raise bad(f"expected a JSON object, got {type(item).__name__}")
    for field in ("instruction", "output"):
        if not isinstance(item.get(field), str):
            raise bad("missing or not a string (expected rtune generate output or AlpacaEval "
                      "records: instruction, output, generator)", field)
    if not item["output"].strip() and not allow_empty:
        raise bad("empty output (pass --allow-empty to judge empty answers as they are)",
                  "output")
    qid = item.get("question_id", item.get("id"))
    return Answer(
        test_set=str(item.get("test_set") or item.get("dataset") or test_set_name(p)),
        question_id=None if qid is None else str(qid), instruction=item["instruction"],
        output=item["output"], generator=str(item.get("generator") or p.name.split(".")[0]),
        path=str(p), line=line)


def _keyed(answers: list[Answer], by_id: bool) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    for a in answers:
        ident = a.question_id if by_id else hashlib.sha1(
            a.instruction.strip().encode()).hexdigest()[:12]
        key = f"{a.test_set}/{ident}"
        if key in out:
            raise InputError(a.path, f"question {key} appears twice (also in "
                             f"{out[key].path}, line {out[key].line})", line=a.line)
        out[key] = a
    return out


@dataclass
class Pairing:
    pairs: dict[str, tuple[Answer, Answer]]
    only_a: list[str]
    only_b: list[str]
    name_a: str
    name_b: str


def pair_answers(a: list[Answer], b: list[Answer], *, allow_partial: bool = False) -> Pairing:
    """Match the two sides' answers by (test set, question id), or by question text when a
    side has no ids. Questions on one side only are an error unless ``allow_partial``."""
    if not a or not b:
        raise ConfigError("both sides need answers (positional files and --vs files)")
    by_id = all(x.question_id is not None for x in [*a, *b])
    ka, kb = _keyed(a, by_id), _keyed(b, by_id)
    only_a = sorted(set(ka) - set(kb))
    only_b = sorted(set(kb) - set(ka))
    if (only_a or only_b) and not allow_partial:
        raise InputError(
            (a if only_a else b)[0].path,
            "the two sides answer different questions: " + _missing_text(only_a, only_b)
            + "; pass --allow-partial to judge the questions both sides answer")
    pairs = {k: (ka[k], kb[k]) for k in sorted(set(ka) & set(kb))}
    for key, (x, y) in pairs.items():
        if x.instruction.strip() != y.instruction.strip():
            raise InputError(y.path, f"question {key} differs from {x.path}, line {x.line}: "
                             "the two sides were not generated from the same test set",
                             line=y.line, field="instruction")
    if not pairs:
        raise InputError(a[0].path, "no question is answered by both sides")
    return Pairing(pairs, only_a, only_b, _side_name(a), _side_name(b))


def _side_name(answers: list[Answer]) -> str:
    names = sorted({x.generator for x in answers})
    return names[0] if len(names) == 1 else "+".join(names)


def _missing_text(only_a: list[str], only_b: list[str]) -> str:
    parts = []
    for side, keys in (("B lacks", only_a), ("A lacks", only_b)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            parts.append(f"{side} {len(keys)} ({shown})")
    return "; ".join(parts)


# ---------------------------------------------------------------- judging


@dataclass
class JudgeSettings:
    model: str
    prompt: Prompt
    max_tokens: int = 1024
    temperature: float = 0.0
    guided: GuidedSpec | None = None  # the score line, then the explanation

    def request(self, question: str, answer_1: str, answer_2: str) -> ChatRequest:
        messages = self.prompt.messages(question=question, answer_1=answer_1, answer_2=answer_2)
        return ChatRequest(messages=messages, model=self.model, temperature=self.temperature,
                           max_tokens=self.max_tokens, guided=self.guided)

    def reask(self, request: ChatRequest, reply: str) -> ChatRequest:
        text = str(self.prompt.extra.get("reask") or "Write the two scores alone on the "
                   "first line, Assistant 1's first, then your explanation.").strip()
        messages = [*request.messages, {"role": "assistant", "content": reply},
                    {"role": "user", "content": text}]
        return ChatRequest(messages=messages, model=self.model, temperature=self.temperature,
                           max_tokens=self.max_tokens, guided=self.guided)


async def judge_one(engine: Any, store: RunStore, settings: JudgeSettings, key: str,
                    order: str, a: Answer, b: Answer) -> dict[str, Any]:
    """One judgment of question ``key`` in ``order``; stored unless the call itself failed."""
    first, second = (a, b) if order == "ab" else (b, a)
    request = settings.request(a.instruction, first.output, second.output)
    item_key = f"{key}|{order}"
    stored = store.get_item(NAMESPACE, item_key)
    if stored is not None and stored.get("request_key") == request.key():
        return stored
    record: dict[str, Any] = {"key": key, "order": order, "request_key": request.key(),
                              "judge_model": settings.model, "prompt": settings.prompt.tag}
    try:
        reply = await engine.complete(request, stage="judge")
        scores = parse_scores(reply.text)
        record["raw"] = reply.text
        record["guided"] = (reply.extra.get("guided") or {}).get("used", "off")
        if reply.finish_reason == "length":
            record["cut"] = True
        if scores is None:
            again = await engine.complete(settings.reask(request, reply.text), stage="judge")
            record["raw_reask"] = again.text
            scores = parse_scores(again.text)
    except (TransientError, PermanentError) as e:  # recorded by the engine; a rerun retries
        return {**record, "status": "error", "reason": e.reason}
    if scores is None:
        record["status"] = "unparseable"
        store.add_failure(request.key(), "judge", "unparseable",
                          (record.get("raw_reask") or record["raw"])[:500])
    else:
        record["status"] = "ok"
        record["scores"] = list(scores)
    store.put_item(NAMESPACE, item_key, record)
    return record


@dataclass
class JudgeConfig(EndpointConfig):
    """The judge (:class:`~rtune.endpoint_config.EndpointConfig`'s fields) and the judging."""

    allow_partial: bool = settings_field(
        False, "judge only the questions both sides answered (default: refuse, listing the "
        "missing ones)")
    allow_empty: bool = settings_field(
        False, "judge empty answers as they are (default: refuse them)")
    prompts_dir: str | None = settings_field(
        None, "folder with a judge.yaml overriding the packaged judge prompt", flag="--prompts",
        metavar="DIR")
    max_tokens: int = settings_field(1024, "judge reply budget")
    resamples: int = settings_field(
        2000, "bootstrap resamples for the win-rate score's 95%% interval")
    # the --guided mode (None: auto for a local judge, off for an endpoint)
    guided: str | bool | None = None

    def __post_init__(self, oracle: str | None = None) -> None:
        super().__post_init__(oracle)
        check_settings(max_tokens=self.max_tokens)


def judge(paths_a: Sequence[str | Path], paths_b: Sequence[str | Path],
          config: JudgeConfig | None = None, *, judge_spec: str | None = None,
          run_dir: str | Path, out_dir: str | Path | None = None,
          options: EndpointConfig | None = None, progress: bool = False,
          **changes: Any) -> dict[str, Any]:
    """Judge side A's answers against side B's, both orders; write results to ``out_dir``.
    ``config``: the judge and the judging; or ``judge_spec`` (the judge's spec) with
    ``changes`` (other :class:`JudgeConfig` fields: ``model=``, ``max_tokens=``, ...) and
    ``options`` (endpoint settings) beside it."""
    if judge_spec is not None:
        changes["spec"] = judge_spec
    if config is None:
        endpoint = options.endpoint_values() if options is not None else {}
        config = JudgeConfig(**{**endpoint, **changes})
    elif changes:
        config = replace(config, **changes)
    judge_spec, model, max_tokens = config.spec, config.model, config.max_tokens
    allow_empty, guided = config.allow_empty, config.guided
    pairing = pair_answers(read_answers(paths_a, allow_empty=allow_empty),
                           read_answers(paths_b, allow_empty=allow_empty),
                           allow_partial=config.allow_partial)
    prompt = load_prompt("judge", config.prompts_dir)
    config.require()
    judge_model = model or generator_name(judge_spec, None)
    mode = guided_default(check_guided(guided), judge_spec)
    settings = JudgeSettings(judge_model, prompt, max_tokens=max_tokens,
                             guided=guided_spec(JUDGE, mode, judge_spec, config.loop_guard))
    tasks = [(key, order, a, b) for key, (a, b) in pairing.pairs.items() for order in ORDERS]
    with RunStore(run_dir, writer="judge") as store:
        with RunProgress(len(tasks), enabled=progress, label="judge") as bar:
            engine = config.engine(store, on_call=bar.add_call)

            async def one(task: tuple[str, str, Answer, Answer]) -> dict[str, Any]:
                result = await judge_one(engine, store, settings, *task)
                bar.advance()
                return result

            judgments = engine.run(one, tasks)
        store.set_meta("judge", {"a": pairing.name_a, "b": pairing.name_b,
                                 "judge_model": judge_model, "prompt": prompt.tag})
        if hasattr(engine.backend, "guided"):  # which guided fields the endpoint took
            store.set_meta("guided", {"mode": mode, **engine.backend.guided.report()})
        calls = store.call_totals()
    by_key: dict[str, dict[str, dict[str, Any]]] = {}
    for j in judgments:
        by_key.setdefault(j["key"], {})[j["order"]] = j
    rows = []
    for key, (a, _b) in pairing.pairs.items():
        pair = by_key.get(key, {})
        rows.append(question_row(key, a.test_set, pair.get("ab"), pair.get("ba")))
    results = tally(rows, resamples=config.resamples)
    results.update({
        "a": pairing.name_a, "b": pairing.name_b,
        "judge": {"model": judge_model, "endpoint": "remote" if config.model_spec.is_endpoint
                  else "local", "prompt": prompt.id, "prompt_version": prompt.version,
                  "temperature": settings.temperature, "max_tokens": max_tokens,
                  "guided": mode, "readable": readable(judgments)},
        "missing": {"only_a": pairing.only_a, "only_b": pairing.only_b},
        "run_dir": str(run_dir), "calls": calls,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if out_dir is not None:
        write_results(results, rows, out_dir)
    return results


def readable(judgments: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Judge replies whose first reply had a readable score line, by how they were guided."""
    out: dict[str, dict[str, int]] = {}
    for j in judgments:
        if "raw" not in j:
            continue
        row = out.setdefault(j.get("guided", "off"), {"replies": 0, "readable": 0})
        row["replies"] += 1
        row["readable"] += parse_scores(j["raw"]) is not None
    return out


def question_row(key: str, test_set: str, ab: dict[str, Any] | None,
                 ba: dict[str, Any] | None) -> dict[str, Any]:
    """One question's result: the outcome for side A, or why it failed."""
    row: dict[str, Any] = {"key": key, "test_set": test_set,
                           "scores_ab": (ab or {}).get("scores"),
                           "scores_ba": (ba or {}).get("scores")}
    statuses = [(j or {}).get("status", "error") for j in (ab, ba)]
    if statuses == ["ok", "ok"]:
        row["outcome"] = outcome(_pair(row["scores_ab"]), _pair(row["scores_ba"]))
    else:
        row["failure"] = "unparseable" if "unparseable" in statuses else "error"
    return row


def _pair(scores: Sequence[float]) -> Scores:
    return float(scores[0]), float(scores[1])


def tally(rows: list[dict[str, Any]], *, resamples: int = 2000) -> dict[str, Any]:
    """W/T/L, win-rate score and bootstrap CI per test set and overall; failure counts."""
    per_set: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_set.setdefault(r["test_set"], []).append(r)

    def block(items: list[dict[str, Any]]) -> dict[str, Any]:
        results: list[Outcome] = [r["outcome"] for r in items if "outcome" in r]
        d = summarize(results, resamples=resamples)
        d["questions"] = len(items)
        d["failed"] = len(items) - len(results)
        return d

    failures: dict[str, int] = {}
    for r in rows:
        if "failure" in r:
            failures[r["failure"]] = failures.get(r["failure"], 0) + 1
    return {"test_sets": {name: block(items) for name, items in sorted(per_set.items())},
            "overall": block(rows), "failures": failures,
            "failed_questions": [r["key"] for r in rows if "failure" in r]}


def write_results(results: dict[str, Any], rows: list[dict[str, Any]],
                  out_dir: str | Path) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": str(out / "results.json"), "questions": str(out / "questions.jsonl")}
    if missing("report") is None:  # the chart needs matplotlib (the report extra)
        paths["chart"] = str(out / "wtl.png")
    results["files"] = paths
    write_text_atomic(Path(paths["results"]), json.dumps(results, indent=2, ensure_ascii=False)
                  + "\n")
    write_text_atomic(Path(paths["questions"]),
                  "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if "chart" in paths:
        wtl_chart(results, paths["chart"])
    return paths


def wtl_chart(results: dict[str, Any], path: str | Path) -> None:
    """Horizontal stacked bars (win / tie / lose share per test set and overall), as in the
    papers' comparison figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [(name, b) for name, b in results["test_sets"].items()]
    if len(blocks) > 1:
        blocks.append(("all", results["overall"]))
    blocks = [(name, b) for name, b in blocks if b["n"]][::-1]
    judge_name = results.get("judge", {}).get("model", "")
    title = f"{results['a']} vs {results['b']}" + (f" (judge: {judge_name})" if judge_name
                                                   else "")
    if not blocks:  # every question failed: say so instead of drawing empty axes
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.axis("off")
        ax.set_title(title)
        ax.text(0.5, 0.5, f"no question judged: {results['overall']['failed']} failed "
                "(see results.json)", ha="center", va="center", fontsize=11)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(blocks) + 1.6))
    colors = {"win": "#4c9a5a", "tie": "#d9c36a", "loss": "#c8574d"}
    labels = {"win": f"{results['a']} wins", "tie": "tie", "loss": f"{results['b']} wins"}
    left = [0.0] * len(blocks)
    for part in ("win", "tie", "loss"):
        shares = [b[part] / b["n"] for _, b in blocks]
        names = [n + (f" ({b['failed']} failed)" if b.get("failed") else "")
                 for n, b in blocks]
        bars = ax.barh(names, shares, left=left, color=colors[part], label=labels[part])
        for bar, (_, b), share in zip(bars, blocks, shares):
            if share >= 0.06:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2,
                        str(b[part]), ha="center", va="center", color="white", fontsize=9)
        left = [x + s for x, s in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of questions")
    ax.set_title(title)
    height = fig.get_figheight()
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))  # room for the legend below the axis
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- saved reviews

_KNOWN_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
_NAME_KEYS = (("model_name1", "model_name2"), ("model1", "model2"), ("model_1", "model_2"),
              ("Model1", "Model2"))


def import_reviews(paths: Sequence[str | Path], *, out_dir: str | Path | None = None,
                   resamples: int = 2000) -> dict[str, Any]:
    """Re-score saved Cherry_LLM / AlpaGasus review files (``Meta_Info`` + ``data`` items with
    ``review``/``review_reverse`` texts) with our parser and W/T/L rule, reporting every
    disagreement with the ``scores``/``scores_reverse`` stored in the files."""
    rows: list[dict[str, Any]] = []
    stored_rows: list[dict[str, Any]] = []
    disagreements: list[dict[str, Any]] = []
    names: set[tuple[str, str]] = set()
    for path in paths:
        p = Path(path)
        meta, items = _review_file(p)
        test_set = str(meta.get("dataset_name") or meta.get("dataset") or _review_set_name(p))
        names.add(next(((str(meta[x]), str(meta[y])) for x, y in _NAME_KEYS
                        if x in meta and y in meta), ("Answer1", "Answer2")))
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(str(p), "expected an object", record=i, field="data")
            key = f"{test_set}/{item.get('question_id', item.get('id', i))}"
            ours, theirs = {}, {}
            for order, field in (("ab", "review"), ("ba", "review_reverse")):
                text = item.get(field)
                if not isinstance(text, str):
                    raise InputError(str(p), "missing or not a string", record=i, field=field)
                ours[order] = parse_scores(text)
                stored_field = "scores" if order == "ab" else "scores_reverse"
                theirs[order] = _stored_scores(item.get(stored_field))
                if ours[order] != theirs[order]:
                    disagreements.append({"key": key, "file": str(p), "record": i,
                                          "field": field, "ours": ours[order],
                                          "stored": item.get(stored_field),
                                          "first_line": text.strip().split("\n")[0][:200]})
            rows.append(question_row(key, test_set, *(_judgment(ours[o]) for o in ORDERS)))
            stored_rows.append(question_row(key, test_set,
                                            *(_judgment(theirs[o]) for o in ORDERS)))
    results = tally(rows, resamples=resamples)
    stored = tally(stored_rows, resamples=resamples)
    name_a, name_b = sorted(names)[0] if len(names) == 1 else ("Answer1", "Answer2")
    results.update({
        "a": name_a, "b": name_b, "judge": {"model": "imported reviews", "prompt": None,
                                            "prompt_version": None},
        "imported": [str(p) for p in paths], "disagreements": disagreements,
        "stored_scores": {"test_sets": stored["test_sets"], "overall": stored["overall"],
                          "failures": stored["failures"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if out_dir is not None:
        write_results(results, rows, out_dir)
    return results


def _review_file(p: Path) -> tuple[dict[str, Any], list[Any]]:
    if not p.is_file():
        raise InputError(str(p), "review file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise InputError(str(p), f"not valid JSON: {e.msg}", line=e.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(str(p), "expected a JSON object with 'Meta_Info' and a 'data' list "
                         "(Cherry_LLM / AlpaGasus review file)", field="data")
    meta = data.get("Meta_Info") or {}
    return (meta if isinstance(meta, dict) else {}), data["data"]


def _review_set_name(p: Path) -> str:
    head = p.stem.split("_")[0].lower()
    return head if head in _KNOWN_SETS else p.stem.split("_review")[0]


def _stored_scores(value: Any) -> Scores | None:
    """``"[8.0, 7.0]"`` / ``[8, 7]`` / ``"8 7"`` -> (8.0, 7.0); ``[-1, -1]`` (their failure
    marker) and anything else -> None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return parse_scores(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            pair = (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            return None
        return pair if all(0 <= s <= 10 for s in pair) else None
    return None


def _judgment(scores: Scores | None) -> dict[str, Any]:
    return {"status": "ok", "scores": list(scores)} if scores else {"status": "unparseable"}
