"""Replies cannot stall a run: the marker and tag parsers take time linear in a reply's length,
on long mixtures of blanks and markers too, and a long reply is parsed off the event loop."""

import asyncio
import time

from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtune.linear import OFF_LOOP_CHARS, fence_spans, off_loop
from rtune.parse import parse_sections
from rtune.reflection import canonical_reflection, parse_reflection

INS = ("New Instruction", "New Answer")
ECHO = ("your new instruction", "your new answer")
MS_PER_KB = 50  # generous: the parsers need well under 1 ms per KB; the old marker parser
# needed seconds for a few thousand blanks after a label


def ms_per_kb(parse, text: str) -> float:
    """Milliseconds per KB (texts under 1 KB count as 1 KB)."""
    start = time.perf_counter()
    parse(text)
    return (time.perf_counter() - start) * 1000 / max(len(text) / 1024, 1)


blanks = st.builds(lambda chunk, n: chunk * n,
                   st.sampled_from([" ", "\t", "\n", " \n", "\r\n", "\u00a0", "\n\n  "]),
                   st.integers(0, 4000))
MARKER_PIECES = ["New Instruction", "New Answer", "new  answer", "[", "]", "[/", ":", "**", "*",
                 "_", "`", "#", "1.", "2)", "-", ">", "end", "End", "[End]", "x", "Do X.", "N/A",
                 "your new instruction", "---", '"']
marker_mixtures = st.lists(st.one_of(st.sampled_from(MARKER_PIECES), blanks),
                           max_size=24).map("".join)


@settings(max_examples=150, deadline=None)
@given(marker_mixtures)
@example("New Instruction" + " " * 1500 + "x")
@example("[New Answer] a\n" + "New Instruction" + " \n" * 1000 + "x")
@example("1." + "\n" * 3000 + "New Answer" + " " * 3000 + ":" + " " * 3000 + "\n[End" + " " * 3000)
def test_marker_parser_time_is_linear_on_blank_and_marker_mixtures(text):
    assert ms_per_kb(lambda t: parse_sections(t, INS, ECHO), text) < MS_PER_KB


def test_megabyte_of_blanks_around_markers_parses_quickly_and_correctly():
    blank = " " * 400_000
    text = ("Critique.\n**New Instruction:**" + blank + "\nDescribe rain." + blank + "\n[End]\n"
            "New Answer" + "\n" * 200_000 + "Rain is water." + blank + "\nEnd\n")
    start = time.perf_counter()
    r = parse_sections(text, INS, ECHO)
    assert time.perf_counter() - start < 5
    assert r.fields == {"New Instruction": "Describe rain.", "New Answer": "Rain is water."}


TAG_PIECES = ["<thinking>", "</thinking>", "<reflection>", "</reflection>", "<output>",
              "</output>", "<", "</", ">", "```", "````", "~~~", "`", "x", "a```", "answer"]
tag_mixtures = st.lists(st.one_of(st.sampled_from(TAG_PIECES), blanks), max_size=24).map("".join)


@settings(max_examples=150, deadline=None)
@given(tag_mixtures)
@example("<output>x</output>\n" + "`" * 3000 + "\n" + "a\n" * 3000)
@example("<" + " " * 4000 + "x<output>y</output>")
def test_tag_parser_time_is_linear_on_blank_tag_and_fence_mixtures(text):
    assert ms_per_kb(lambda t: canonical_reflection(parse_reflection(t)), text) < MS_PER_KB


def test_fences_keep_their_meaning():
    text = "````\ncode <output>no</output>\n```\n<output>yes</output>"
    # the four-backtick fence has no closer of its own length: it is read as ``` and closed there
    assert fence_spans(text) == [(0, text.index("```\n<") + 3)]
    assert parse_reflection(text).output == "yes"
    assert fence_spans("````\na\n```\n````x\n") == [(0, 15)]  # its own length wins
    assert fence_spans("  ```py\nx\n  ```</output>") == [(0, 15)]
    assert fence_spans("```\nunclosed") == [] and fence_spans("x ```\ny\n```") == []


def test_long_reply_is_parsed_off_the_event_loop():
    text = "New Instruction:\n" * 150_000  # dense markers: the slowest kind of text per KB
    assert len(text) > OFF_LOOP_CHARS

    async def main() -> tuple[int, object]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        ticks = 0
        result = await off_loop(parse_sections, text, INS, ECHO)
        done.set()
        await task
        return ticks, result

    ticks, result = asyncio.run(main())
    assert result.reasons == {"New Instruction": "empty", "New Answer": "missing"}
    assert ticks >= 5  # other coroutines ran while the reply was parsed
