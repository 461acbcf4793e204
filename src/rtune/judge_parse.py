"""Pairwise-judge arithmetic: the score reader, the W/T/L rule and the win-rate score.

The judge writes the two scores alone on its first line ("8 7", "8/10 7/10", "**8** **6**",
"Scores: 8.5, 7"). Real judges, asked by other prompts, also label them ("Assistant 1: 8,
Assistant 2: 7", "8/10 for Assistant 1"), put them at the end of their explanation ("... a score
of 3 out of 10, and Assistant 2 a score of 10 out of 10"), under a heading per answer
("Assistant 1:" then "Score: 6/10" on a following line), or give one score to both ("Both
assistants get 7"). :func:`parse_scores` reads these forms and returns None when the reply is
not clearly two scores (a first line of prose holding numbers, a formula, a date, a label
scored twice differently): a wrong score is worse than none, and the caller re-asks.

Replies are untrusted, so reading takes time linear in their length: every search starts at a
literal (a label, "both", "for"/"to"), runs are matched atomically and no two neighbouring
repeats can match the same character, and the first line is read token by token, at most
_MAX_TOKENS of them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from .linear import atomic

Scores = tuple[float, float]
Outcome = str  # "win" | "tie" | "loss", always from side A's point of view
OUTCOMES = ("win", "tie", "loss")


_MAX_TOKENS = 40  # a line of scores is short; a longer first line is prose
# markdown around scores and labels reads as a blank
_NOISE = str.maketrans(dict.fromkeys("*_`#>[]()", " "))
# the first non-empty line (line ends as str.splitlines sees them)
_FIRST_LINE = re.compile(r"\s*([^\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]*)")
# words a line holding only two scores may also hold
_SCORE_LINE_WORDS = frozenset({"score", "scores", "rating", "ratings", "and", "for", "vs",
                               "versus", "final", "overall", "points", "point"})
_LABEL_WORDS = ("score|scores|gets|get|got|receives|receive|received|is|of|a|an|rated|rating|"
                "deserves|earns|overall|final|total|with")
_BOTH_WORDS = ("assistants|answers|responses|models|get|gets|got|receive|receives|received|"
               "deserve|deserves|earn|earns|score|scores|scored|are|were|is|rated|given|a|an|of|"
               "equally|the|same|rating|ratings")


def _blanks(plus: bool = False) -> str:
    """Blanks within a line, matched atomically."""
    return atomic(r"[^\S\n]+" if plus else r"[^\S\n]*")


def _label() -> str:
    """ "Assistant 1", "Answer B", "assistant 2's" (group ``which``); its digit is no score."""
    return rf"(?:assistant|answer|response|model|output){_blanks()}(?P<which>[12ab])\b(?:'s)?"


def _score() -> str:
    """A score (group ``num``) and what may follow it: "/10", "out of 10", "points"."""
    return (r"(?P<num>\d+(?:\.\d+)?)"
            rf"(?:{_blanks()}(?:/|out{_blanks(True)}of){_blanks()}10(?:\.0+)?(?![\d.]*\d)"
            rf"|{_blanks(True)}points?\b)?")


def _clause_end() -> str:
    """A score ends its clause: a line end, punctuation, "and", "but", "while"..."""
    return (rf"(?={_blanks()}(?:\n|\Z|[,;.!|&]|(?:and|but|while|whereas|vs|versus|respectively)"
            r"\b))")


def _words(words: str) -> str:
    """Up to six of ``words``, with blanks and ":", "=", "-" around them, on one line."""
    def sep() -> str:
        return atomic(r"[^\S\n]*(?:[:=\-\u2013]+[^\S\n]*)*")
    return rf"{sep()}(?:(?:{words})\b{sep()}){{0,6}}"


# (the reply is lower-cased first; every search starts with a literal, so it skips ahead at C
# speed)
_TOKEN = re.compile(rf"\s*(?:{_score()}|(?P<label>{_label()})|(?P<word>[^\W\d_]+)"
                    r"|(?P<sep>[,;:|&=\-\u2013.!])|\S)")
# "Assistant 1: 8", "Assistant 2's score is 7/10", "Assistant 1 a score of 3 out of 10"
_LABEL_SCORE = re.compile(_label() + _words(_LABEL_WORDS) + _score() + _clause_end())
# "8/10 for Assistant 1", "a 7 to Assistant 2": found by "for"/"to" + label, then the score is
# looked for right before it, within _SCORE_BEFORE characters
_FOR_LABEL = re.compile(rf"(?:for|to){_blanks(True)}{_label()}")
_SCORE_BEFORE = 24
_SCORE_AT_END = re.compile(rf"(?<![\w.]){_score()}{_blanks(True)}\Z")
# "Assistant 1:" alone on its line, then within four lines one starting "Score: 6/10"
_HEADED = re.compile(
    rf"{_label()}{_blanks()}(?:(?:answer|response|evaluation|review)s?{_blanks()})?"
    rf"(?::{_blanks()})?"
    rf"(?=\n(?P<gap>(?:[^\n]*\n){{0,4}}?){_blanks()}(?:(?:overall|final|total){_blanks(True)})?"
    rf"(?:score|rating)s?{_words('out|of|10')}{_score()}{_clause_end()})")
_ANY_LABEL = re.compile(_label())
_WHICH_NUM = itemgetter(_LABEL_SCORE.groupindex["which"] - 1, _LABEL_SCORE.groupindex["num"] - 1)
# "Both assistants get 7", "both: 7/10", "I give both assistants a 7"
_BOTH = re.compile(rf"both(?<![\w]both){_words(_BOTH_WORDS)}{_score()}{_clause_end()}")
_MAX_DIGITS = 6  # a longer number is no score (and float() of it costs)


def _valid(pair: Sequence[float]) -> Scores | None:
    if len(pair) == 2 and all(0 <= s <= 10 for s in pair):
        return float(pair[0]), float(pair[1])
    return None


def _score_line(line: str) -> tuple[bool, Scores | None]:
    """Whether ``line`` (stripped, markdown blanked) holds only scores, and the two it holds.

    Only numbers (with "/10", "out of 10"), separators and a few words such as "Scores:" or
    "and" may appear; one other word (a formula's "f", a date's month, prose) makes it no
    score line. Labels make it no line of bare scores either: labelled scores are read by
    label, anywhere in the reply."""
    numbers: list[float] = []
    pos = tokens = 0
    while pos < len(line):
        tokens += 1
        m = _TOKEN.match(line, pos)
        pos = m.end()
        num, word = m.group("num"), m.group("word")
        if tokens > _MAX_TOKENS or (num is not None and len(num) > _MAX_DIGITS):
            return False, None
        if num is not None:
            numbers.append(float(num))
        elif m.group("sep") is None and word not in _SCORE_LINE_WORDS:
            return False, None
    return bool(numbers), _valid(numbers)


def _labelled(text: str) -> Scores | None:
    """Scores by label anywhere in ``text``; None unless each label has exactly one."""
    found: dict[str, set[float]] = {"1": set(), "2": set()}

    def add(which: str, score: str) -> None:
        value = float(score) if len(score) <= _MAX_DIGITS else float("inf")  # inf: no score
        found[{"a": "1", "b": "2"}.get(which, which)].add(value)

    for which, score in set(map(_WHICH_NUM, _LABEL_SCORE.findall(text))):  # C-speed per match
        add(which, score)
    for m in _FOR_LABEL.finditer(text):
        before = _SCORE_AT_END.search(text, max(0, m.start() - _SCORE_BEFORE), m.start())
        if before:
            add(m.group("which"), before.group("num"))
    for m in _HEADED.finditer(text):
        if not _ANY_LABEL.search(m.group("gap")):  # the score line belongs to this heading
            add(m.group("which"), m.group("num"))
    for m in _BOTH.finditer(text):
        add("1", m.group("num"))
        add("2", m.group("num"))
    if len(found["1"]) == 1 and len(found["2"]) == 1:
        return _valid([*found["1"], *found["2"]])
    return None


def parse_score_line(line: str) -> Scores | None:
    """The two scores of one line, or None."""
    clean = line.translate(_NOISE).lower().strip()
    is_scores, scores = _score_line(clean)
    return scores if is_scores else _labelled(clean)


def parse_scores(text: str | None) -> Scores | None:
    """Scores (assistant 1, assistant 2) from a judge's reply, or None if it is not clearly two.

    A first line holding only scores decides (two valid ones, or None). Otherwise the scores
    are read by label anywhere in the reply, and each label must have exactly one.
    """
    if not text:
        return None
    clean = text.translate(_NOISE).lower()
    first = _FIRST_LINE.match(clean).group(1).strip()
    if not first:
        return None
    is_scores, scores = _score_line(first)
    return scores if is_scores else _labelled(clean)


def compare(first: float, second: float) -> str:
    return "better" if first > second else "equal" if first == second else "worse"


def outcome(forward: Scores, reverse: Scores) -> Outcome:
    """Side A's result for one question.

    ``forward``: scores with A as assistant 1 and B as assistant 2; ``reverse``: the judgment
    with the answers swapped (B first, A second), scores as the judge wrote them.
    A wins when better in both orders or better in one and equal in the other; a tie when equal
    in both or better in one and worse in the other; B wins symmetrically.
    """
    a1 = compare(forward[0], forward[1])
    a2 = compare(reverse[1], reverse[0])
    states = {a1, a2}
    if states <= {"better", "equal"} and "better" in states:
        return "win"
    if states <= {"worse", "equal"} and "worse" in states:
        return "loss"
    return "tie"


@dataclass
class Tally:
    win: int = 0
    tie: int = 0
    loss: int = 0

    @property
    def n(self) -> int:
        return self.win + self.tie + self.loss

    def add(self, result: Outcome) -> None:
        setattr(self, result, getattr(self, result) + 1)

    @classmethod
    def of(cls, results: Iterable[Outcome]) -> Tally:
        t = cls()
        for r in results:
            t.add(r)
        return t

    def score(self) -> float | None:
        return win_rate_score(self.win, self.loss, self.n)


def win_rate_score(wins: int, losses: int, n: int) -> float | None:
    """(W - L) / N + 1: 1 means even, 2 all wins, 0 all losses."""
    return (wins - losses) / n + 1 if n else None


def bootstrap_ci(results: Sequence[Outcome], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the win-rate score, resampling questions."""
    n = len(results)
    if n == 0:
        return None
    values = [1 if r == "win" else -1 if r == "loss" else 0 for r in results]
    rng = random.Random(seed)
    stats = sorted(sum(rng.choices(values, k=n)) / n + 1 for _ in range(resamples))
    lo = stats[int((1 - level) / 2 * (resamples - 1))]
    hi = stats[int((1 + level) / 2 * (resamples - 1))]
    return lo, hi


def summarize(results: Sequence[Outcome], *, resamples: int = 2000, seed: int = 0) -> dict:
    t = Tally.of(results)
    ci = bootstrap_ci(results, resamples=resamples, seed=seed)
    return {"win": t.win, "tie": t.tie, "loss": t.loss, "n": t.n, "score": t.score(),
            "ci95": list(ci) if ci else None}
