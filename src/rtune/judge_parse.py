"""Pairwise-judge arithmetic: the score-line parser, the W/T/L rule and the win-rate score.

The judge writes the two scores alone on its first line; real judges also write "8/10 7/10",
"Assistant 1: 8, Assistant 2: 7", "**8** **6**", "Scores: 8.5, 7", or put each score on its
own "Assistant N: s" line. :func:`parse_scores` reads all of these and returns None when it
cannot be sure, never a guessed tie.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Scores = tuple[float, float]
Outcome = str  # "win" | "tie" | "loss", always from side A's point of view
OUTCOMES = ("win", "tie", "loss")

_NUMBER = r"(\d+(?:\.\d+)?)"
# "Assistant 1", "Answer 2:", "Response A", "AI assistant 1" ...: the label's own digit is not a
# score. Letters A/B only count right after such a word.
_LABEL = re.compile(r"\b(?:ai\s+)?(?:assistant|answer|response|model|output)\s*(?:#\s*)?"
                    r"(?:[12]|[ab])\b\s*(?:'s)?\s*(?:score)?\s*", re.IGNORECASE)
_OUT_OF = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?\b", re.IGNORECASE)
_LINE_LABEL = re.compile(r"^\W*(?:ai\s+)?(?:assistant|answer|response)\s*([12ab])\b(?:'s)?\W*"
                         r"(?:score\W*)?" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*10)?",
                         re.IGNORECASE)
_LABEL_WHICH = re.compile(r"\b(?:ai\s+)?(?:assistant|answer|response|model|output)\s*(?:#\s*)?"
                          r"([12]|[ab])\b", re.IGNORECASE)
_AFTER_LABEL = re.compile(r"(?:'s)?[\s:=\-\u2013(]*(?:(?:score|scores|gets|got|receives|is|of|a|"
                          r"an|rated|rating|deserves)\b[\s:=\-\u2013(]*){0,4}" + _NUMBER,
                          re.IGNORECASE)
_NOISE = re.compile(r"[*_`#>\[\]()]")
_NUMBERS = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w.]*\d)")


def _valid(pair: Sequence[float]) -> Scores | None:
    if len(pair) == 2 and all(0 <= s <= 10 for s in pair):
        return float(pair[0]), float(pair[1])
    return None


def parse_score_line(line: str) -> Scores | None:
    """The two scores of one line, or None."""
    text = _NOISE.sub(" ", line)
    text = _OUT_OF.sub(" ", text)
    labelled = _labelled(text)
    if labelled is not None:
        return labelled
    text = _LABEL.sub(" ", text)
    text = re.sub(r"(?<=\d),(?=\d)", " , ", text)  # "8,7" is two scores, not a decimal
    numbers = [float(n) for n in _NUMBERS.findall(text)]
    return _valid(numbers)


def _labelled(text: str) -> Scores | None:
    """Scores written right after their labels ("Assistant 2: 7, Assistant 1: 8"), by label."""
    found: dict[str, float] = {}
    for m in _LABEL_WHICH.finditer(text):
        after = _AFTER_LABEL.match(text, m.end())
        if after:
            which = {"a": "1", "b": "2"}.get(m.group(1).lower(), m.group(1))
            found.setdefault(which, float(after.group(1)))
    if set(found) == {"1", "2"}:
        return _valid([found["1"], found["2"]])
    return None


def parse_scores(text: str | None) -> Scores | None:
    """Scores (assistant 1, assistant 2) from a judge's reply, or None if unparseable.

    First the first non-empty line; else two consecutive "Assistant N: s" lines at the top.
    """
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    first = parse_score_line(lines[0])
    if first is not None:
        return first
    labelled: dict[str, float] = {}
    for line in lines[:4]:
        m = _LINE_LABEL.match(_NOISE.sub(" ", line).strip())
        if not m:
            continue
        which = {"a": "1", "b": "2"}.get(m.group(1).lower(), m.group(1))
        labelled.setdefault(which, float(m.group(2)))
    if set(labelled) == {"1", "2"}:
        return _valid([labelled["1"], labelled["2"]])
    return None


def compare(first: float, second: float) -> str:
    return "better" if first > second else "equal" if first == second else "worse"


def outcome(forward: Scores, reverse: Scores) -> Outcome:
    """Side A's result for one question (DESIGN.md §5).

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
