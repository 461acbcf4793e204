"""`rtune report`: files written, page data, and the page itself driven in headless Chromium
(Debian's chromium over the DevTools protocol, see chromium_cdp.py)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the report needs the report extra")

from chromium_cdp import Chromium, Page, find_chromium
from rtune.cli import main
from rtune.records import Record
from rtune.report import CHUNK_ROWS, write_report
from rtune.stats import LengthCounter, compute_stats, load_input
from rtune.store import RunStore

N = 57
XSS = "</script><script>window.__xss = 1</script><img src=x onerror='window.__xss=2'>"


def has_cands(i: int) -> bool:
    return i % 10 != 9


def is_fallback(i: int) -> bool:
    return has_cands(i) and i % 7 == 0


def kept_kind(i: int) -> str | None:
    return [None, "res", "both", "orig"][i % 4]


def has_decision(i: int) -> bool:
    return i < 40 and has_cands(i)


def build_run(run_dir: Path) -> Path:
    with RunStore(run_dir) as st:
        src = [Record(instruction=f"Explain topic {i} briefly", input="" if i % 3 else f"ctx {i}",
                      output=f"Topic {i} is about things number {i}.", source_index=i)
               for i in range(N)]
        for r in src:
            st.put_candidate(r)
        for r in src:
            if not has_cands(r.source_index):
                continue
            i = r.source_index
            ins = r.derive("ins", instruction=r.instruction + " with three examples",
                           output=r.output + " Example one. Example two.", raw=f"critique {i} {XSS}",
                           parse_status="ok", oracle_model="oracle-x", prompt_id="reflect_ins")
            res = r.derive("res", output="A better answer: " + r.output +
                           (" zanzibar" if i == 33 else " More detail."), raw=f"weak answer {i}",
                           parse_status="fallback" if is_fallback(i) else "ok",
                           fallback_reason="missing" if is_fallback(i) else None)
            both = ins.derive("both", output=ins.output + " Even more.", parse_status="ok")
            for c in (ins, res, both):
                st.put_candidate(c)
            st.put_scores([((i, k), {"ifd_ppl": 0.5 + (i % 7) / 10 + j / 100,
                                     "rifd_ppl": 0.4 + (i % 5) / 10})
                           for j, k in enumerate(("orig", "ins", "res", "both"))])
            if has_decision(i):
                st.put_item("selection", str(i), {"policy": "reflection", "kept": kept_kind(i),
                                                  "case": "ins_harder" if i % 2 else "res_branch",
                                                  "reason": f"why {i}"})
        st.add_failure("k", "reflect", "timeout")
    return run_dir


WORDS = LengthCounter("whitespace", "words")


def page_data(index_html: Path) -> tuple[dict, list]:
    html = index_html.read_text()
    idx = json.loads(re.search(r'id="rtune-index">(.*?)</script>', html, re.S).group(1))
    rows = []
    for chunk in re.findall(r'id="rtune-chunk-\d+">(.*?)</script>', html, re.S):
        rows.extend(json.loads(chunk))
    return idx, rows


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    run = build_run(tmp / "run")
    stats = compute_stats([load_input(run)], WORDS)
    write_report(stats, tmp / "out", chunk_rows=10)
    return tmp / "out"


def test_report_files_and_page_data(run_report):
    out = run_report
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "failures.png", "ifd_rifd.png", "lengths.png"]  # no coherence was measured
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((out / "stats.json").read_text())
    assert [g["group"] for g in stats["groups"]] == ["orig", "ins", "res", "both", "selected"]
    html = (out / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "page must not load remote files"
    assert html.count("data:image/png;base64,") == 3
    assert XSS not in html and "<script>window.__xss" not in html  # "<" escaped in the JSON
    idx, rows = page_data(out / "index.html")
    assert idx["mode"] == "run" and idx["kinds"] == ["orig", "ins", "res", "both"]
    assert len(rows) == len(idx["meta"]) == N
    assert idx["reasons"] == ["res: missing"]
    assert idx["reason_counts"] == [sum(map(is_fallback, range(N)))]
    row = rows[1]
    assert [v["k"] for v in row["v"]] == ["orig", "ins", "res", "both"]
    assert row["d"]["kept"] == "res" and row["v"][2]["sc"]["ifd_ppl"] == pytest.approx(0.62)
    assert row["v"][1]["raw"].endswith(XSS)
    assert [v["k"] for v in rows[9]["v"]] == ["orig"]


def test_large_data_goes_to_chunk_files(tmp_path):
    run = build_run(tmp_path / "run")
    stats = compute_stats([load_input(run)], WORDS)
    res = write_report(stats, tmp_path / "out", inline_limit_mb=0.001)
    files = sorted((tmp_path / "out" / "data").glob("chunk-*.js"))
    assert res.chunk_files == len(files) == -(-N // CHUNK_ROWS)  # one chunk: N < CHUNK_ROWS
    assert 'id="rtune-chunk-' not in res.index.read_text()
    body = files[0].read_text()
    assert body.startswith("window.rtuneChunk(0, ")
    # back under the limit: the stale chunk files are removed, the data is inline again
    res = write_report(stats, tmp_path / "out")
    assert res.chunk_files == 0 and not list((tmp_path / "out" / "data").glob("*.js"))


def _dataset(path: Path, items: list[dict]) -> Path:
    path.write_text(json.dumps(items))
    return path


def test_compare_datasets_cli(tmp_path, tiny_llama_path, capsys):
    a = _dataset(tmp_path / "a.json", [{"id": f"r{i}", "instruction": f"q {i}",
                                        "output": "short"} for i in range(3)])
    b = _dataset(tmp_path / "b.json", [{"id": f"r{i}", "instruction": f"q {i} harder",
                                        "output": "a much longer answer"}
                                       for i in (2, 0, 1, 7)])
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "cmp"), "--tokenizer",
                 str(tiny_llama_path), "--no-coherence"]) == 0
    assert "4 records" in capsys.readouterr().out  # r0 r1 r2 r7 aligned by id
    stats = json.loads((tmp_path / "cmp" / "stats.json").read_text())
    assert [(g["dataset"], g["count"]) for g in stats["groups"]] == [("a.json", 3), ("b.json", 4)]
    assert stats["runs"] == {}
    idx, rows = page_data(tmp_path / "cmp" / "index.html")
    assert idx["mode"] == "datasets" and idx["kinds"] == ["a.json", "b.json"]
    by_id = {r["i"]: r for r in rows}
    assert set(by_id) == {"r0", "r1", "r2", "r7"}
    assert [v["k"] for v in by_id["r2"]["v"]] == ["a.json", "b.json"]
    assert by_id["r2"]["v"][1]["ins"] == "q 2 harder"
    assert [v["k"] for v in by_id["r7"]["v"]] == ["b.json"]
    flags = {r: [idx["reasons"][k] for k in m[3]] for r, m in zip(by_id, idx["meta"])}
    assert flags["r0"] == ["instruction differs", "response differs"]
    assert flags["r7"] == ["missing in a.json"]


# ---------------------------------------------------------------- headless Chromium

SNAP = """await window.rtuneRendered;
const b = document.getElementById('browser');
return {matching: +b.dataset.matching, page: +b.dataset.page, pages: +b.dataset.pages,
  idx: [...document.querySelectorAll('article.rec')].map(a => +a.dataset.idx),
  kinds: [...document.querySelectorAll('article.rec')].map(a =>
    [...a.querySelectorAll('.col')].map(c => c.dataset.kind).join(',')),
  hash: decodeURIComponent(location.hash), status: document.getElementById('status').textContent,
  errors: document.getElementById('js-errors').textContent, xss: window.__xss || null};"""


def choose(select_id: str, value: str) -> str:
    return (f"const s = document.getElementById('{select_id}'); s.value = {json.dumps(value)};"
            f"s.dispatchEvent(new Event('change')); {SNAP}")


def click(button_id: str) -> str:
    return f"document.getElementById('{button_id}').click(); {SNAP}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    b = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_browser_filters_search_paging(browser, run_report, tmp_path):
    page = Page(browser)
    url = (run_report / "index.html").as_uri()
    page.goto(url)
    s = page.js(SNAP)
    assert (s["matching"], s["page"], s["pages"]) == (N, 1, 3)
    assert s["idx"] == list(range(20))
    assert s["kinds"][0] == "orig,ins,res,both" and s["kinds"][9] == "orig"

    with_cands = [i for i in range(N) if has_cands(i)]
    s = page.js(choose("f-kind", "both"))
    assert s["matching"] == len(with_cands) and s["idx"] == with_cands[:20]
    assert set(s["kinds"]) == {"orig,both"} and "kind=both" in s["hash"]

    s = page.js(choose("f-decision", "dropped"))
    dropped = [i for i in with_cands if has_decision(i) and kept_kind(i) is None]
    assert s["idx"] == dropped and s["pages"] == 1

    s = page.js(choose("f-decision", "kept:orig"))
    assert s["idx"] == [i for i in with_cands if has_decision(i) and kept_kind(i) == "orig"]

    page.js(choose("f-decision", "undecided"))
    s = page.js(choose("f-kind", ""))
    assert s["matching"] == sum(not has_decision(i) for i in range(N))

    page.js(choose("f-decision", ""))
    s = page.js(choose("f-reason", "0"))  # "res: missing"
    assert s["idx"] == [i for i in range(N) if is_fallback(i)]
    s = page.js(choose("f-reason", "none"))
    assert s["matching"] == N - sum(map(is_fallback, range(N)))
    page.js(choose("f-reason", ""))

    s = page.js("const q = document.getElementById('f-q'); q.value = 'ZANZIBAR';"
                "q.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));" + SNAP)
    assert s["idx"] == [33] and "q=ZANZIBAR" in s["hash"]
    added = page.js("return [...document.querySelectorAll('article.rec .col[data-kind=res] ins')]"
                    ".map(e => e.textContent);")
    assert "zanzibar" in "".join(added) and "A better answer:" in "".join(added)
    page.js("const q = document.getElementById('f-q'); q.value = '';"
            "q.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));" + SNAP)

    page.js(click("next"))
    s = page.js(click("next2"))
    assert (s["page"], s["idx"]) == (3, list(range(40, N))) and "page=3" in s["hash"]
    assert page.js("return document.getElementById('next').disabled;") is True
    s = page.js(click("prev"))
    assert s["idx"] == list(range(20, 40))
    s = page.js(choose("f-per", "50"))
    assert (s["page"], s["pages"], s["idx"]) == (1, 2, list(range(50))) and "per=50" in s["hash"]
    page.js(choose("f-per", "20"))

    # a linked view: the state comes from the URL hash
    page.goto(url + "#kind=res&reason=0&page=2")
    s = page.js(SNAP)
    fb = [i for i in range(N) if is_fallback(i)]
    assert s["matching"] == len(fb) and s["page"] == 1  # page clamped to the last one
    page.goto(url + "#kind=res&page=2")
    s = page.js(SNAP)
    assert (s["page"], s["idx"]) == (2, with_cands[20:40])
    assert page.js("return document.getElementById('f-kind').value;") == "res"
    s = page.js("location.hash = 'decision=kept:both';"
                "await new Promise(r => setTimeout(r, 100));" + SNAP)  # edited by hand
    assert s["idx"] == [i for i in with_cands if has_decision(i) and kept_kind(i) == "both"]

    assert s["errors"] == "" and s["xss"] is None
    assert page.errors() == []

    page.js("document.getElementById('records').scrollIntoView();"
            "document.querySelector('article.rec details').open = true;")
    shot = tmp_path / "report-records.png"
    shot.write_bytes(base64.b64decode(page.send("Page.captureScreenshot",
                                                {"format": "png"})["data"]))
    print(f"\nscreenshot of the record browser: {shot}")
    assert shot.stat().st_size > 10_000


def test_browser_lazy_chunk_files(browser, tmp_path):
    run = build_run(tmp_path / "run")
    res = write_report(compute_stats([load_input(run)], WORDS), tmp_path / "out",
                       inline_limit_mb=0.001, chunk_rows=10)
    assert res.chunk_files == 6
    page = Page(browser)
    page.goto(res.index.as_uri() + "#page=3")
    s = page.js(SNAP)
    assert s["idx"] == list(range(40, N))
    s = page.js("const q = document.getElementById('f-q'); q.value = 'zanzibar';"
                "q.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));" + SNAP)
    assert s["idx"] == [33] and s["errors"] == ""
    assert page.errors() == []


def test_datasets_paired_by_output_text_when_order_differs(tmp_path):
    def answer(i: int) -> str:
        return f"answer {1 if i == 24 else i}"  # one repeated output, as in real data

    a = _dataset(tmp_path / "a.json", [{"instruction": f"q {i}", "input": f"in {i}",
                                        "output": answer(i)} for i in range(25)])
    order = [3, 1, 24, 0, 2, *range(4, 24)]
    b = _dataset(tmp_path / "b.json", [{"instruction": f"q {i} merged with in {i}",
                                        "output": answer(i)} for i in order])
    stats = compute_stats([load_input(a), load_input(b)], WORDS)
    write_report(stats, tmp_path / "out")
    idx, rows = page_data(tmp_path / "out" / "index.html")
    assert len(rows) == 25
    for row in rows:
        orig, merged = row["v"]
        assert merged["ins"] == f"{orig['ins']} merged with {orig['inp']}"
    assert "paired by output" in (tmp_path / "out" / "index.html").read_text()
    write_report(stats, tmp_path / "pos", align="position")
    _, rows = page_data(tmp_path / "pos" / "index.html")
    assert rows[0]["v"][1]["ins"] == "q 3 merged with in 3"


def test_partial_and_empty_runs(tmp_path, browser):
    with RunStore(tmp_path / "only-sources") as st:
        for i in range(3):
            st.put_candidate(Record(instruction=f"q {i}", output=f"a {i}", source_index=i))
    res = write_report(compute_stats([load_input(tmp_path / "only-sources")], WORDS),
                       tmp_path / "o1")
    assert [p.name for p in res.figures] == ["lengths.png"]
    idx, rows = page_data(res.index)
    assert idx["kinds"] == ["orig"] and [r["d"] for r in rows] == [None] * 3
    RunStore(tmp_path / "empty").close()
    res = write_report(compute_stats([load_input(tmp_path / "empty")], WORDS), tmp_path / "o2")
    assert res.figures == [] and res.records == 0
    assert "No figure has data yet" in res.index.read_text()
    page = Page(browser)
    page.goto(res.index.as_uri())
    s = page.js(SNAP)
    assert (s["matching"], s["pages"], s["idx"], s["errors"]) == (0, 1, [], "")
    assert page.errors() == []


def test_browser_dataset_differences(tmp_path, browser):
    a = _dataset(tmp_path / "a.json", [{"instruction": f"q {i}", "output": f"answer {i}"}
                                       for i in range(30)])
    b = _dataset(tmp_path / "b.json", [{"instruction": f"q {i}" + (" more" if i % 3 else ""),
                                        "output": f"answer {i}"} for i in range(30)])
    res = write_report(compute_stats([load_input(a), load_input(b)], WORDS), tmp_path / "out")
    page = Page(browser)
    page.goto(res.index.as_uri())
    s = page.js(SNAP)
    assert (s["matching"], s["kinds"][0]) == (30, "a.json,b.json")
    s = page.js(choose("f-reason", "any"))
    assert s["idx"] == [i for i in range(30) if i % 3]
    added = page.js("return [...document.querySelectorAll('.col[data-kind=\"b.json\"] ins')]"
                    ".map(e => e.textContent.trim());")
    assert set(added) == {"more"}
    s = page.js(choose("f-reason", "none"))
    assert s["idx"] == list(range(0, 30, 3)) and s["errors"] == ""
    assert page.errors() == []
