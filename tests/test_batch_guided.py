"""Guided output in the batch modes: each request line carries the field of its --guided mode,
a JSON reply is mapped back into the marked text when read, and every call records the same
provenance the online path records (guided, or unguided with a note where the engine ignored
the field), in exported rounds and through the Batch API."""

import json
import re

import pytest

from batch_server import BatchServer
from oracle_server import default_reply
from record_files import alpaca_jsonl
from rtune.guided import NAMESPACE
from rtune.guided_forms import gbnf, regex, response_format
from rtune.recipe import load_recipe
from rtune.recycle import recycle, stage_shapes
from rtune.recycle_batch import recycle_batch
from rtune.recycle_config import RecycleConfig
from rtune.recycle_rounds import BatchOptions, export_round, import_round
from rtune.status import run_status
from rtune.store import RunStore
from test_batch_rounds import MODEL, candidates, run_round, table

FIELDS = ("response_format", "structured_outputs", "guided_regex", "regex", "grammar",
          "guided_grammar", "guided")


def config(**kw):
    return RecycleConfig(**{"model": MODEL, "mode": "export", "progress": False, **kw})


def json_reply(body):
    """An engine applying the JSON schema: the default reply's parts as the shape's object."""
    text = default_reply(body)
    parts = {"critique": text.split("[", 1)[0].strip()}
    parts |= {label.lower().replace(" ", "_"): part
              for label, part in re.findall(r"\[([^\]]+)\] (.*?) \[End\]", text)}
    props = body["response_format"]["json_schema"]["schema"]["properties"]
    return json.dumps({k: parts[k] for k in props})


def lines(export):
    return [json.loads(line) for path, _ in export.files for line in open(path)]


def provenance(run_dir):
    with RunStore(run_dir, create=False) as store:
        return sorted((json.dumps(v, sort_keys=True) for _, v in store.items(NAMESPACE)))


@pytest.mark.parametrize(("mode", "field", "value"), [
    ("auto", "response_format", response_format),
    ("json", "response_format", response_format),
    ("regex", "structured_outputs", lambda s: {"regex": regex(s)}),
    ("grammar", "grammar", gbnf),
])
def test_each_line_carries_the_field_of_its_mode(tmp_path, mode, field, value):
    src = alpaca_jsonl(tmp_path, 3)
    guided = config(stages=("response",), guided=mode)
    shape = stage_shapes(guided)["response"]
    opts = BatchOptions(requests_dir=str(tmp_path / "req"))
    got = lines(export_round(src, tmp_path / "run", guided, opts).export)
    plain = lines(export_round(src, tmp_path / "plain", config(stages=("response",)),
                               BatchOptions(requests_dir=str(tmp_path / "req-plain"))).export)
    assert len(got) == len(plain) == 3
    assert all({k for k in FIELDS if k in r["body"]} == {field} for r in got)
    assert all(r["body"][field] == value(shape) for r in got)
    # the same request otherwise, under another key: a guided call is another call
    assert sorted([{k: v for k, v in r["body"].items() if k != field} for r in got],
                  key=str) == sorted([r["body"] for r in plain], key=str)
    assert not {r["custom_id"] for r in got} & {r["custom_id"] for r in plain}
    with RunStore(tmp_path / "run", create=False) as store:
        assert store.get_meta("guided") == {"mode": mode, next(
            n for n in ("response_format", "structured_outputs.regex", "grammar")
            if n.startswith(field)): "sent in every batch line"}


def test_json_replies_make_what_the_online_path_makes(oracle_server, tmp_path):
    oracle_server.script(json_reply)
    online = RecycleConfig(oracle=oracle_server.url, model=MODEL, progress=False, guided="json")
    recycle(alpaca_jsonl(tmp_path, 4), tmp_path / "online", online)
    src = alpaca_jsonl(tmp_path, 4, name="copy.jsonl")
    opts = BatchOptions(requests_dir=str(tmp_path / "req"))
    s = export_round(src, tmp_path / "run", config(guided="json"), opts)
    rounds, results = [], []
    while s.export.round is not None:
        rounds.append(s.export.lines)
        results += run_round(s.export, tmp_path / "out", reply=json_reply)
        s = import_round(src, tmp_path / "run", config(guided="json"), results[-1:], opts)
    assert rounds == [8, 4]  # instruction + response, then both: every reply parsed
    assert candidates(tmp_path / "run") == candidates(tmp_path / "online")
    assert provenance(tmp_path / "run") == provenance(tmp_path / "online") == [json.dumps(
        {"mode": "json", "used": "json", "via": "response_format"}, sort_keys=True)] * 12
    with RunStore(tmp_path / "run", create=False) as store:
        assert all(c.extra["guided"] == "json" and "[End]" in c.raw
                   for c in store.candidates() if c.kind != "orig")
    split = run_status(tmp_path / "run")["stages"]
    assert {stage: set(st["guided"]) for stage, st in split.items()} == {
        "instruction": {"json"}, "response": {"json"}, "both": {"json"}}
    # the replies were stored as read (marked text): importing them again changes nothing
    before = [table(tmp_path / "run", t) for t in ("calls", "items", "candidates")]
    import_round(src, tmp_path / "run", config(guided="json"), results, opts)
    assert [table(tmp_path / "run", t) for t in ("calls", "items", "candidates")] == before
    assert all(not row[4].startswith("{") for row in before[0])


def test_a_json_reply_read_again_in_a_later_round_reads_as_marked_text(oracle_server,
                                                                       tmp_path):
    """Task 1's first reply has a placeholder answer: re-asked in round 2, where the first
    reply is read again (as the marked text it was stored as: the re-ask is the online one)."""
    def placeholder(body):
        user = body["messages"][-1]["content"]
        if "Your reply is missing" in user:
            return json.dumps({"critique": "ok", "new_instruction": "again",
                               "new_answer": "fixed on re-ask"})
        data = json.loads(json_reply(body))
        return json.dumps(data | {"new_answer": "N/A"} if "Task 1" in user else data)

    oracle_server.script(placeholder)
    stages = ("instruction",)
    recycle(alpaca_jsonl(tmp_path, 3), tmp_path / "online", RecycleConfig(
        oracle=oracle_server.url, model=MODEL, progress=False, guided="json", stages=stages))
    src = alpaca_jsonl(tmp_path, 3, name="copy.jsonl")
    s = export_round(src, tmp_path / "run", config(guided="json", stages=stages),
                     BatchOptions())
    rounds = []
    while s.export.round is not None:
        rounds.append(s.export.lines)
        s = import_round(src, tmp_path / "run", config(guided="json", stages=stages),
                         run_round(s.export, tmp_path / "out", reply=placeholder))
    assert rounds == [3, 1]
    got = candidates(tmp_path / "run")
    assert got == candidates(tmp_path / "online")
    assert got[(1, "ins")][1:4:2] == ("fixed on re-ask", "ok")


@pytest.mark.parametrize(("mode", "used", "via", "note"), [
    ("regex", "regex", "structured_outputs.regex", None),
    ("grammar", "grammar", "grammar", None),
    ("auto", "off", "response_format", "the server ignored response_format"),
])
def test_marked_replies_are_guided_or_recorded_as_ignored(tmp_path, mode, used, via, note):
    """An engine that wrote the marked text: what a regex or grammar asks for; for the JSON
    schema, a sign it ignored the field: the reply is parsed unguided, and says so."""
    src = alpaca_jsonl(tmp_path, 3)
    guided = config(stages=("response",), guided=mode)
    s = export_round(src, tmp_path / "run", guided, BatchOptions())
    s = import_round(src, tmp_path / "run", guided, run_round(s.export, tmp_path / "out"))
    assert s.export.round is None and s.totals["candidates"]["res"] == {"ok": 3}
    expected = {"mode": mode, "used": used, "via": via} | ({"note": note} if note else {})
    assert provenance(tmp_path / "run") == [json.dumps(expected, sort_keys=True)] * 3
    assert set(run_status(tmp_path / "run")["stages"]["response"]["guided"]) == {used}


def test_a_reply_cut_at_max_tokens_stays_flagged_as_cut(tmp_path):
    src = alpaca_jsonl(tmp_path, 2)
    guided = config(stages=("response",), guided="json", reask=0)
    s = export_round(src, tmp_path / "run", guided, BatchOptions())
    (result,) = run_round(s.export, tmp_path / "out", reply=lambda b: json_reply(b)[:30])
    result.write_text(result.read_text().replace('"finish_reason":"stop"',
                                                 '"finish_reason":"length"'))
    import_round(src, tmp_path / "run", guided, [result])
    with RunStore(tmp_path / "run", create=False) as store:
        res = list(store.candidates("res"))
    assert [(c.parse_status, c.extra["guided"], c.extra["cut"]) for c in res] == [
        ("fallback", "json", True)] * 2
    assert all("reply cut at max tokens" in c.fallback_reason for c in res)
    assert provenance(tmp_path / "run") == [json.dumps(
        {"mode": "json", "used": "json", "via": "response_format",
         "note": "reply cut before it was complete"}, sort_keys=True)] * 2


def test_the_batch_api_gets_the_json_schema_and_its_replies_parse(tmp_path):
    with BatchServer() as server:
        server.reply = lambda b: json_reply(b) if "response_format" in b else default_reply(b)
        guided = RecycleConfig(oracle=server.url, model="gpt-4o-mini", mode="batch",
                               progress=False, guided="auto")
        s = recycle_batch(alpaca_jsonl(tmp_path, 3), tmp_path / "run", guided,
                          BatchOptions(wait=True, poll_interval=0.01))
        bodies = [line["body"] for b in server.order
                  for line in server._lines(server.batches[b])]
    assert s.done and s.totals["candidates"]["both"] == {"ok": 3}
    assert len(bodies) == 9 and all("response_format" in b and "guided" not in b
                                    for b in bodies)
    assert provenance(tmp_path / "run") == [json.dumps(
        {"mode": "auto", "used": "json", "via": "response_format"}, sort_keys=True)] * 9


def test_guided_is_off_in_the_batch_modes_unless_asked_and_a_recipe_may_ask(tmp_path):
    assert config().guided_mode == "off"
    assert config(mode="import", guided=True).guided_mode == "auto"
    (tmp_path / "data.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    (tmp_path / "q.jsonl").write_text('{"instruction": "Name a colour."}\n')
    (tmp_path / "r.yaml").write_text(
        "data: data.json\nmodels:\n  oracle: {spec: 'https://api.example.com/v1', model: "
        "gpt-4o}\narms: {original: original, selected: selected}\ntest_sets: [q.jsonl]\n"
        "recycle: {mode: batch, guided: json}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert (recipe.recycle.mode, recipe.recycle.guided_mode) == ("batch", "json")
