"""The judge score reader: the forms real judges write are read, anything that is not clearly
two scores gives None (the caller re-asks), and reading is linear in the reply's length."""

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtune.judge_parse import parse_score_line, parse_scores

# ---------------------------------------------------------------- forms that must be read

END_OF_REVIEW = (
    "Assistant 1 lists three tips without explaining any of them.\n\n"
    "Assistant 2 explains each tip, why it helps and how to start.\n\n"
    "Therefore I give Assistant 1 a score of 3 out of 10, and Assistant 2 a score of 10 out of 10.")
HEADED = ("Assistant 1:\nScore: 6/10\nThe answer is correct but misses the second part.\n\n"
          "Assistant 2:\nScore: 8/10\nThe answer covers both parts.")
HEADED_WITH_NOTES = ("**Assistant 1's answer:**\n- Helpfulness: good\n- Accuracy: one slip\n"
                     "Overall score: 6.5/10\n\n**Assistant 2's answer:**\nRating: 9")


@pytest.mark.parametrize(("text", "expected"), [
    (END_OF_REVIEW, (3, 10)),
    (HEADED, (6, 8)),
    (HEADED_WITH_NOTES, (6.5, 9)),
    ("Both assistants get 7.\nThey are equally helpful and accurate.", (7, 7)),
    ("Both answers are correct and complete. Both assistants receive a score of 9 out of 10.",
     (9, 9)),
    ("I give both assistants 8/10.", (8, 8)),
    ("Scores: 6/10 for Assistant 2 and 8/10 for Assistant 1.", (8, 6)),
])
def test_scores_written_elsewhere_than_alone_on_the_first_line_are_read(text, expected):
    assert parse_scores(text) == (float(expected[0]), float(expected[1]))


# ---------------------------------------------------------------- not clearly two scores


@pytest.mark.parametrize("text", [
    "The function f(2) = 4 is evaluated correctly by both.\nAssistant 1 shows the steps.",
    "Released on 3/7, the model answers the question well.\nMore detail follows.",
    "x = 2y + 3, so the first answer is right.\nDetails.",
    "Both answers cite 2 sources and 3 examples.",
    "Assistant 1 gets 2 of the 3 facts right; Assistant 2 gets 3.",
    "Assistant 1: 8\nOn reflection, Assistant 1: 6\nAssistant 2: 7",  # one label, two scores
    "Assistant 1:\nThe answer is vague.\nAssistant 2:\nScore: 8/10",  # the score is 2's only
    "Both assistants get 7.\nAssistant 1: 9\nAssistant 2: 7",
])
def test_text_that_is_not_clearly_two_scores_gives_none(text):
    assert parse_scores(text) is None


def test_first_line_of_scores_still_decides():
    assert parse_scores("8 7\nBoth assistants get 5 points for style.") == (8.0, 7.0)
    assert parse_scores("12 7\nAssistant 1: 8, Assistant 2: 7") is None  # out of range: re-ask
    assert parse_score_line("8/10, 6.5/10") == (8.0, 6.5)
    assert parse_score_line("In 2021 the rule was 3 to 4") is None


# ---------------------------------------------------------------- linear time

PIECES = ["Assistant 1", "Assistant 2", "assistant", "both", "Both assistants get", "score",
          "Score:", ":", "8", "7", "10", "/10", "out of", "for", "and", "a", "\n", "x", ",", "1.5"]
blanks = st.builds(lambda chunk, n: chunk * n, st.sampled_from([" ", "\n", " \n", "\t", ":"]),
                   st.integers(0, 4000))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), blanks), max_size=24).map("".join))
@example("Assistant 1 " + " " * 20_000 + "x")
@example("8" + " " * 20_000 + "x")
@example("1" * 20_000 + ".x2")
def test_reading_scores_is_linear_on_blank_and_label_mixtures(text):
    start = time.perf_counter()
    parse_scores(text)
    assert (time.perf_counter() - start) * 1000 / max(len(text) / 1024, 1) < 50
