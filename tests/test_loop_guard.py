"""The loop guard's watch: a text that repeats itself is found as its tokens come (blanks
aside), one copy is kept, and real instruction data never sets it off."""

from __future__ import annotations

import json

import pytest

from rtune.oracle.loop_guard import LoopWatch


def _watch(pieces: list[str], span: int = 64) -> tuple[LoopWatch, int | None]:
    """Push ``pieces`` (one token each) until the watch fires; the watch and the token index
    it fired at (None: never)."""
    watch = LoopWatch(span, lambda i: pieces[i])
    for i in range(len(pieces)):
        if watch.push(i):
            return watch, i
    return watch, None


def _words(text: str) -> list[str]:
    return [w + " " for w in text.split(" ")]


def test_a_repeated_sentence_is_found_and_one_copy_kept():
    pieces = _words("Critique: the answer is short. "
                    + "The answer is inaccurate because it involves a process. " * 4)
    watch, at = _watch(pieces)
    assert at is not None and watch.period == len("The answer is inaccurate because it "
                                                  "involves a process. ")
    kept = "".join(pieces[:watch.keep()])
    assert kept == ("Critique: the answer is short. The answer is inaccurate because it "
                    "involves a process. ")


def test_copies_that_wrap_their_lines_differently_are_still_copies():
    text = ("The process of obliteration is a fantasy that is not a reality. The process of "
            "obliteration is a\nfantasy that is not a reality.\nThe process of obliteration "
            "is a fantasy that is not a reality.")
    watch, at = _watch(list(text))
    assert at is not None
    assert text[:watch.keep()] == ("The process of obliteration is a fantasy that is not a "
                                   "reality.")


def test_without_a_sentence_end_the_copy_ends_on_a_whole_word():
    text = "The instruction is not good enough, as the " * 4
    watch, at = _watch(list(text))
    assert at is not None and text[:watch.keep()] == "The instruction is not good enough, as the"


def test_a_short_repeat_within_the_span_is_no_loop():
    assert _watch(list("It is very, very, very good. " * 2 + "Then it ends."))[1] is None


def test_a_rule_of_dashes_is_no_loop_but_endless_blanks_are():
    table = "Country | Density\n" + "-" * 200 + "\nFrance | 119\n"
    assert _watch(list(table))[1] is None
    pieces = ["An answer."] + ["\n"] * 80
    watch, at = _watch(pieces)
    assert at == 64 and watch.keep() == 1  # the text before the blanks


def test_restart_forgets_what_came_before():
    pieces = _words("A loop of words. " * 8)
    watch, at = _watch(pieces, span=16)
    assert at is not None
    watch.restart()
    assert not any(watch.push(i) for i in range(3)) and watch.text == "A loop of "


def test_real_instruction_data_never_sets_it_off(shared_data):
    """Every instruction, input and output of the Cherry Alpaca sample (3,111 records),
    character by character: not one is taken for a loop."""
    rows = json.loads((shared_data / "cherry_alpaca_5_percent.json").read_text())
    assert len(rows) > 3000
    fired = []
    for n, row in enumerate(rows):
        for field in ("instruction", "input", "output"):
            text = row.get(field) or ""
            watch, at = _watch(list(text))
            if at is not None:
                fired.append((n, field, text[max(0, at - 80):at + 1]))
    assert fired == []


@pytest.mark.parametrize("span", [16, 64])
def test_the_watch_fires_once_the_repeat_reaches_the_span(span):
    unit = "abc " * 2  # period 4 (blanks collapse to one)
    text = unit * 40
    watch, at = _watch(list(text), span=span)
    assert at is not None and watch.period == 4
    assert at + 1 == span + 4  # one whole period, then span characters repeating it
