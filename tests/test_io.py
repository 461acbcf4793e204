"""Readers for every input format, writers, and clear errors for bad input."""

import json

import pytest

from rtune.errors import InputError
from rtune.io import detect_format, input_output_format, read_records, write_records
from rtune.records import Record


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_json_list(tmp_path):
    p = write(tmp_path / "a.json", json.dumps([
        {"instruction": "Add", "input": "2+2", "output": "4"},
        {"instruction": "Hi", "output": "Hello"}]))
    recs = list(read_records(p))
    assert [(r.instruction, r.input, r.output, r.source_index) for r in recs] == [
        ("Add", "2+2", "4", 0), ("Hi", "", "Hello", 1)]
    assert recs[0].prompt_text == "Add\n\n2+2"


def test_sharegpt_messages_and_multi_turn(tmp_path):
    lines = [
        {"id": "a", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A2"}]},
        {"messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"},
                      {"role": "user", "content": "more"}, {"role": "assistant", "content": "A4"}]},
    ]
    p = write(tmp_path / "c.jsonl", "\n".join(json.dumps(x) for x in lines))
    a, b, c = read_records(p)
    assert (a.instruction, a.output, a.source_id, a.is_multi_turn) == ("Q", "A", "a", False)
    assert (b.system, b.instruction, b.output) == ("S", "Q2", "A2")
    assert c.is_multi_turn and len(c.messages) == 4


def test_parquet_and_hf_folder(tmp_path):
    pytest.importorskip("datasets", reason="parquet/arrow input needs the data extra")
    from datasets import Dataset

    ds = Dataset.from_list([{"instruction": f"i{i}", "input": "", "output": f"o{i}"}
                            for i in range(5)])
    ds.to_parquet(tmp_path / "d.parquet")
    ds.save_to_disk(tmp_path / "hf")
    for path in (tmp_path / "d.parquet", tmp_path / "hf"):
        recs = list(read_records(path))
        assert [r.output for r in recs] == [f"o{i}" for i in range(5)]


@pytest.mark.parametrize("content, line, field, words", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', 2, None, "malformed JSON"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "", "output": "b"}\n', 2, "instruction", "empty"),
    ('{"instruction": "a"}\n', 1, "output", "missing"),
    ('{"instruction": 3, "output": "b"}\n', 1, "instruction", "expected a string"),
    ('{"question": "a", "answer": "b"}\n', 1, "instruction", "expected instruction/output"),
    ('[1, 2]\n', 1, None, "expected a JSON object"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', 1, "messages[0].role", "unknown role"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, line, field, words):
    p = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(InputError) as e:
        list(read_records(p))
    assert e.value.line == line and e.value.field == field
    assert str(p) in str(e.value) and f"line {line}" in str(e.value) and words in str(e.value)


def test_non_utf8_and_unknown_format(tmp_path):
    p = write(tmp_path / "x.jsonl", b'{"instruction": "caf\xe9", "output": "b"}\n', "wb")
    with pytest.raises(InputError, match="line 1.*not UTF-8"):
        list(read_records(p))
    q = write(tmp_path / "x.txt", "hello world")
    with pytest.raises(InputError, match="unknown format"):
        detect_format(q)
    with pytest.raises(InputError, match="file not found"):
        list(read_records(tmp_path / "nope.json"))


def test_skip_invalid_collects_every_error_and_keeps_the_rest(tmp_path):
    p = write(tmp_path / "m.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n'
              '{"instruction": "c", "output": ""}\n{"instruction": "d", "output": "e"}\n')
    errors = []
    recs = list(read_records(p, on_invalid=errors.append))
    assert [r.instruction for r in recs] == ["a", "d"]
    assert [r.source_index for r in recs] == [0, 3]
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "output")]


def test_bad_json_list_names_record(tmp_path):
    p = write(tmp_path / "l.json", '[{"instruction": "a", "output": "b"}, {"instruction": "x"}]')
    with pytest.raises(InputError, match="record 1, field 'output'"):
        list(read_records(p))


def test_writers_round_trip(tmp_path):
    recs = [Record("I", "O", input="In", source_index=0, kind="ins", raw="r"),
            Record("I2", "O2", source_index=1)]
    for fmt in ("jsonl", "alpaca", "alpaca-jsonl", "sharegpt", "messages"):
        out = tmp_path / f"out.{fmt}"
        assert write_records(iter(recs), out, format=fmt) == 2
        back = list(read_records(out))
        assert [(r.prompt_text, r.output) for r in back] == [("I\n\nIn", "O"), ("I2", "O2")]
    back = list(read_records(tmp_path / "out.jsonl"))
    assert back[0].kind == "ins" and back[0].raw == "r" and back[0].input == "In"
    assert input_output_format(tmp_path / "out.sharegpt") == "sharegpt"
    assert input_output_format(tmp_path / "out.alpaca") == "alpaca"


def test_real_cherry_alpaca(shared_data):
    recs = list(read_records(shared_data / "cherry_alpaca_5_percent.json"))
    assert len(recs) == 3111
    assert sum(1 for r in recs if r.input.strip()) == 579
    compressed = list(read_records(shared_data / "cherry_alpaca_5_percent_compressed.json"))
    assert len(compressed) == 3111 and all(not r.input for r in compressed)


# ---------------------------------------------------------------- BOMs, surrogates, shapes

BOM = b"\xef\xbb\xbf"
ROW = {"instruction": "Add", "output": "4", "source_index": 0, "kind": "orig", "ifd_ppl": 0.5}


def test_a_bom_is_accepted_in_every_text_input(tmp_path):
    from rtune.judge import read_answers
    from rtune.oracle.pricing import Prices
    from rtune.prompts import load_prompt
    from rtune.select import load_table
    from rtune.testsets import load_test_set

    line = json.dumps(ROW).encode()
    for name, body in [("a.json", b"[" + line + b"]"), ("a.jsonl", line + b"\n"),
                       ("b.jsonl", b"\n" + line + b"\n")]:
        p = write(tmp_path / name, BOM + body, "wb")
        assert [r.instruction for r in read_records(p)] == ["Add"], name
        assert load_table(p)[1] == {(0, "orig"): {"ifd_ppl": 0.5}}, name
        assert input_output_format(p) in ("alpaca", "alpaca-jsonl"), name
        assert read_answers([p])[0].output == "4", name
        assert load_test_set(p)[0].instruction == "Add", name
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write(prompts / "reask.yaml", BOM + b"id: reask\nversion: 9\nuser: again\n", "wb")
    assert load_prompt("reask", prompts).version == "9"
    write(tmp_path / "prices.json", BOM + b'{"m": [1, 2]}', "wb")
    assert Prices.load(tmp_path / "prices.json").lookup("m") == (1.0, 2.0)


@pytest.mark.parametrize("text, repaired", [
    ("a\\ud800b", "a\ufffdb"), ("\\udc00", "\ufffd"), ("\\ud800\\ud800", "\ufffd\ufffd"),
    ("\\ud83d\\ude00 ok", "\U0001f600 ok"), ("x\\\\ud800", "x\\ud800")])
def test_lone_surrogates_are_repaired_the_same_in_json_and_jsonl(tmp_path, text, repaired):
    row = f'{{"instruction": "{text}", "output": "o"}}'
    a = list(read_records(write(tmp_path / "a.json", f"[{row}]")))
    b = list(read_records(write(tmp_path / "b.jsonl", row + "\n")))
    assert a[0].instruction == b[0].instruction == repaired
    assert a[0].extra == b[0].extra
    assert ("repaired" in a[0].extra) == ("\ufffd" in repaired)
    out = tmp_path / "out.jsonl"
    write_records(a, out)  # encodable now
    assert json.loads(out.read_text(encoding="utf-8"))["instruction"] == repaired


def test_a_single_json_object_is_not_a_dataset(tmp_path):
    for text in ['{"instruction": "a", "output": "b"}',
                 '{\n  "instruction": "a",\n  "output": "b"\n}\n']:
        p = write(tmp_path / "one.json", text)
        with pytest.raises(InputError, match="one.json: holds a single JSON object"):
            list(read_records(p))
    p = write(tmp_path / "two.json", '{"instruction": "a", "output": "b"}\n' * 2)
    assert len(list(read_records(p))) == 2  # JSON lines under a .json name


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_records([Record(instruction="a", output="b")], tmp_path / "x.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.jsonl").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
