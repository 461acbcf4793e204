"""The import of result lines in chunks: whatever the chunk size and the chunks per
transaction, a file mixing replies to known keys, unknown keys, repeated keys, error lines and
unreadable lines stores exactly the same calls and reports the same counts and lines."""

import json

import pytest

from rtune.batch_import import Importer
from rtune.batch_ledger import Ledger
from rtune.oracle.pricing import Prices
from rtune.store import RunStore

MODEL = "gpt-4o-mini"


def key(i):
    return f"{i:064x}"


def reply(k, text):
    body = {"model": MODEL, "choices": [{"index": 0, "message": {"role": "assistant",
                                                                 "content": text},
                                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    return json.dumps({"id": f"batch_req_{text}", "custom_id": k,
                       "response": {"status_code": 200, "request_id": "r", "body": body},
                       "error": None})


def error(k, code):
    return json.dumps({"id": f"batch_req_{code}_{k[-2:]}", "custom_id": k, "response": None,
                       "error": {"code": code, "message": "no luck"}})


LINES = [
    reply(key(1), "one"),                # 1
    reply(key(99), "stranger"),          # 2: a key this run never made
    '{"custom_id": "' + key(2),          # 3: cut short
    reply(key(2), "two"),                # 4
    reply(key(1), "a repeat"),           # 5: the same key in the file twice
    "",                                  # 6: blank, skipped
    error(key(3), "batch_expired"),      # 7: goes back to pending
    error(key(98), "batch_expired"),     # 8: unknown key
    reply(key(4), "four"),               # 9
    "[1, 2]",                            # 10: not an object
    reply(key(5), "five"),               # 11: answered by an earlier file
    reply(key(4), "a repeat"),           # 12
    error(key(6), "invalid_request"),    # 13: a 400-like code that is no passing reason
]


def make_run(run_dir):
    with RunStore(run_dir, writer="test") as store:
        ledger = Ledger(store)
        for i in range(1, 7):
            ledger.add(key(i), "response", json.dumps({"model": MODEL, "n": i}), 1,
                       tokens_in=10, max_tokens=100)
        ledger.assign([key(i) for i in range(1, 7)], "round-1")
        store.db.execute("INSERT INTO calls(key, model, stage, request, response, created) "
                         "VALUES (?, ?, 'response', '', 'earlier', 0)", (key(5), MODEL))
        ledger.settle_done()


def import_in_chunks(tmp_path, chunk, per_commit=1):
    run_dir = tmp_path / f"run-{chunk}-{per_commit}"
    make_run(run_dir)
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    with RunStore(run_dir, writer="test") as store:
        importer = Importer(Ledger(store), Prices(), model=MODEL, chunk=chunk,
                            per_commit=per_commit)
        first = importer.import_file(path)
        again = importer.import_file(path)
        calls = dict(store.db.execute("SELECT key, response FROM calls"))
        states = dict(store.db.execute("SELECT key, state FROM batch_requests"))
    return first, again, calls, states


@pytest.mark.parametrize(("chunk", "per_commit"), [(1, 1), (2, 1), (3, 2), (5, 1), (4, 3),
                                                   (1000, 5)])
def test_any_chunk_size_imports_exactly_the_known_lines(tmp_path, chunk, per_commit):
    first, again, calls, states = import_in_chunks(tmp_path, chunk, per_commit)
    # stored: the first reply of each known key; never a stranger's, never over an earlier one
    assert calls == {key(1): "one", key(2): "two", key(4): "four", key(5): "earlier"}
    assert states == {key(1): "done", key(2): "done", key(3): "pending", key(4): "done",
                      key(5): "done", key(6): "failed"}
    assert (first.lines, first.imported, first.already, first.refused, first.bad) == (
        12, 3, 3, 2, 2)
    assert first.errors == {"expired": 1, "invalid_request": 1}
    assert first.cost == pytest.approx(3 * Prices().cost(MODEL, 10, 5, batch=True))
    assert first.cost > 0
    path = str(tmp_path / "results.jsonl")
    assert sorted(first.problems) == sorted([
        f"{path}:2: custom_id {key(99)[:16]!r} is no request of this run (another run, or "
        "another model)",
        f"{path}:3: not a JSON line (cut short or damaged)",
        f"{path}:8: custom_id {key(98)[:16]!r} is no request of this run (another run, or "
        "another model)",
        f"{path}:10: not a JSON object"])
    # a second import changes nothing: every reply and error line was seen
    assert (again.imported, again.already, again.errors, again.refused, again.bad) == (
        0, 8, {}, 2, 2)


def test_chunking_changes_nothing_that_is_stored(tmp_path):
    assert import_in_chunks(tmp_path, 1)[2:] == import_in_chunks(tmp_path, 1000)[2:]


def test_a_ledger_of_an_earlier_run_keeps_its_bodies_in_its_rows(tmp_path):
    """Rows written before bodies had their own table: read, imported and settled as they are."""
    run_dir = tmp_path / "run"
    with RunStore(run_dir, writer="test") as store:
        ledger = Ledger(store)
        store.db.executemany(
            "INSERT INTO batch_requests(key, stage, round, state, batch, body, size) "
            "VALUES (?, 'response', 1, 'out', 'round-1', ?, 100)",
            [(key(i), json.dumps({"n": i})) for i in (1, 2)])
        ledger.add(key(3), "response", json.dumps({"n": 3}), 1, tokens_in=1, max_tokens=9)
        ledger.assign([key(3)], "round-1")
        assert [(k, json.loads(b)) for k, b, *_ in ledger.bodies(batch="round-1")] == [
            (key(i), {"n": i}) for i in (1, 2, 3)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(reply(key(i), f"r{i}") + "\n" for i in (1, 2, 3)))
    with RunStore(run_dir, writer="test") as store:
        report = Importer(Ledger(store), Prices(), model=MODEL).import_file(path)
        assert (report.imported, report.refused) == (3, 0)
        assert store.db.execute("SELECT COUNT(*) FROM batch_requests WHERE state = 'done'"
                                ).fetchone() == (3,)
        assert store.get_call(key(1))["text"] == "r1"
