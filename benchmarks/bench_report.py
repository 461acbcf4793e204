"""Report at scale: a synthetic 50k-source run (orig + ins/res/both + raw oracle text each).

    python benchmarks/bench_report.py [--sources 50000] [--words 120] [--inline-limit-mb 48]

Times the Python side (store read, statistics without coherence, page + figures written) and,
when Debian's chromium is installed, the page in headless Chromium: first render, a filter
change, paging, a first and a repeated full-text search. Baseline in the same browser: the
same filter rendered as one page of up to 5000 records (``#per=5000``, the "one giant DOM"
approach) against the paged view (20 per page).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rtune.records import Record  # noqa: E402
from rtune.report import write_report  # noqa: E402
from rtune.stats import LengthCounter, compute_stats, load_input  # noqa: E402
from rtune.store import RunStore  # noqa: E402

VOCAB = ("the of and to in a is that for it as with was on be by this are or from at an "
         "which data model answer question detailed example explain process result first "
         "second because however therefore value system energy water people history code "
         "function number list step table analysis reason context").split()


def words(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choices(VOCAB, k=n))


def build_run(run_dir: Path, n: int, w: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with RunStore(run_dir) as st:
        src = [Record(instruction=words(rnd, w // 6), output=words(rnd, w // 2), source_index=i)
               for i in range(n)]
        for r in src:
            st.put_candidate(dataclasses.replace(r, kind="orig"))
        scores = []
        st.db.execute("BEGIN")
        for r in src:
            i = r.source_index
            ins = r.derive("ins", instruction=r.instruction + " " + words(rnd, w // 6),
                           output=words(rnd, w), raw=words(rnd, w), parse_status="ok")
            res = r.derive("res", output=r.output + " " + words(rnd, w // 2), raw=words(rnd, w),
                           parse_status="fallback" if i % 9 == 0 else "ok",
                           fallback_reason="missing" if i % 9 == 0 else None)
            both = ins.derive("both", output=ins.output + " " + words(rnd, w // 4),
                              raw=words(rnd, w), parse_status="ok")
            for c in (ins, res, both):
                st.put_candidate(c)
            for k in ("orig", "ins", "res", "both"):
                scores.append(((i, k), {"ifd_ppl": rnd.uniform(0.4, 1.2),
                                        "rifd_ppl": rnd.uniform(0.3, 1.1)}))
            st.put_item("selection", str(i), {"policy": "reflection",
                                              "kept": rnd.choice([None, "res", "both"]),
                                              "case": "res_branch", "reason": "synthetic"})
        st.db.execute("COMMIT")
        st.put_scores(scores)
        if n > 12345:
            c = st.get_candidate(12345, "res")
            c.output += " needleword"
            st.put_candidate(c)


def browser_timings(index: Path, n: int) -> list[tuple[str, float, float]]:
    from chromium_cdp import Chromium, Page, find_chromium

    binary = find_chromium()
    if binary is None:
        print("chromium not installed: browser timings skipped")
        return []
    snap = ("await window.rtuneRendered; const b = document.getElementById('browser');"
            "return [+b.dataset.ms, +b.dataset.matching, "
            "document.querySelectorAll('article.rec').length];")
    out = []
    with tempfile.TemporaryDirectory() as prof:
        b = Chromium(binary, Path(prof), timeout=600)
        try:
            page = Page(b)

            def step(name: str, body: str, url: str | None = None) -> tuple[float, int]:
                t = time.perf_counter()
                if url:
                    page.goto(url)
                ms, matching, shown = page.js(body + snap)
                wall = (time.perf_counter() - t) * 1000
                out.append((f"{name} ({matching} match, {shown} shown)", ms, wall))
                return ms, matching

            uri = index.as_uri()
            step("page load + first render", "", url=uri)
            sel = ("const s = document.getElementById('f-kind'); s.value = 'both';"
                   "s.dispatchEvent(new Event('change'));")
            step("filter kind=both", sel)
            step("next page", "document.getElementById('next').click();")
            q = ("const q = document.getElementById('f-q'); q.value = 'needleword';"
                 "q.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));")
            step("search, first (parses all chunks)", q)
            step("search, repeated", "location.hash = 'q=needleword&kind=res';"
                 "await new Promise(r => setTimeout(r, 50));")
            per = min(n, 5000)
            step(f"baseline: kind=both, {per} per page", "", url=uri + f"#kind=both&per={per}")
            errors = page.errors()
            if errors:
                print(f"page errors: {errors[:3]}")
        finally:
            b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=50000)
    ap.add_argument("--words", type=int, default=120, help="words of a recycled answer")
    ap.add_argument("--inline-limit-mb", type=float, default=48.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        build_run(tmp / "run", args.sources, args.words)
        rows = [("build synthetic store", time.perf_counter() - t)]
        t = time.perf_counter()
        inp = load_input(tmp / "run")
        rows.append(("read run store", time.perf_counter() - t))
        t = time.perf_counter()
        stats = compute_stats([inp], LengthCounter("whitespace", "words"))
        rows.append(("statistics (words, no coherence)", time.perf_counter() - t))
        t = time.perf_counter()
        res = write_report(stats, tmp / "out", inline_limit_mb=args.inline_limit_mb)
        rows.append(("write page, stats.json, figures", time.perf_counter() - t))
        html_mb = res.index.stat().st_size / 1e6
        data_mb = sum(p.stat().st_size for p in (tmp / "out").glob("data/*.js")) / 1e6
        print(f"\n{args.sources} sources x 4 candidates; index.html {html_mb:.1f} MB, "
              f"{res.chunk_files} chunk files {data_mb:.1f} MB\n")
        print(f"{'python step':<40}{'seconds':>10}")
        for name, sec in rows:
            print(f"{name:<40}{sec:>10.2f}")
        timings = browser_timings(res.index, args.sources)
        if timings:
            print(f"\n{'browser step':<58}{'render ms':>10}{'wall ms':>10}")
            for name, ms, wall in timings:
                print(f"{name:<58}{ms:>10.1f}{wall:>10.1f}")
            paged = timings[1]
            base = timings[-1]
            print(f"\nbaseline (up to 5000 records in one DOM) / paged render: "
                  f"{base[1] / max(paged[1], 0.1):.0f}x render time, "
                  f"{base[2] / max(paged[2], 0.1):.0f}x wall time")


if __name__ == "__main__":
    main()
