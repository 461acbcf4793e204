"""Reply parsing time per KB: the marker parser (``[New Instruction] ... [End]``), the
Reflection-format tag parser and the judge score reader, on normal oracle replies, 1 MB replies
and worst-case mixtures of blanks and markers. Each worst case is also given as a ratio to the
normal replies' time per KB (goal: within 5x). The marker parser as it was before it became
linear runs in the same process as the baseline, on inputs small enough to finish.

Figures are medians of several interleaved rounds (every case once per round).

    python benchmarks/bench_parse.py [--rounds 5] [--mb 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rtune.judge_parse import parse_scores
from rtune.parse import parse_sections
from rtune.reflection import canonical_reflection, parse_reflection

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cherry_alpaca_5_percent.json"
INS = ("New Instruction", "New Answer")
ECHO = ("your new instruction", "your new answer")
RES = ("Better Answer",)

# ---------------------------------------------------------------- BASELINE: the old parser
# The marker parser before this change, copied unchanged: three neighbouring blank repeats
# around a label make its time grow with the cube of a blank run. Only for comparison.

_OLD_DECOR = r"(?:\*\*|__|\*|_|`)?"
_OLD_END = re.compile(r"\[\s*/?\s*end\s*\]|^[ \t>]*" + _OLD_DECOR + r"\s*end\s*" + _OLD_DECOR
                      + r"\s*$", re.IGNORECASE | re.MULTILINE)


def _old_label_pattern(label: str) -> str:
    words = r"\s+".join(re.escape(w) for w in label.split())
    bracketed = r"\[\s*" + words + r"\s*\]\s*:?"
    line_start = (r"(?:^|(?<=\n))[ \t>]*(?:\d+[.)]\s*|[-*+]\s+|#{1,6}\s*)?" + _OLD_DECOR + r"\s*"
                  + words + r"\s*" + _OLD_DECOR + r"\s*(?::|(?=\s*$))\s*" + _OLD_DECOR)
    return f"(?:{bracketed}|{line_start})"


def old_parse_sections(text: str, labels: tuple[str, ...]) -> dict[str, str | None]:
    """BASELINE (old, super-linear): marker search + End search + cleaning, as before."""
    found = sorted((m.start(), m.end(), label) for label in labels
                   for m in re.finditer(_old_label_pattern(label), text,
                                        re.IGNORECASE | re.MULTILINE))
    fields: dict[str, str | None] = {}
    for label in labels:
        fields[label] = None
        for i, (_, end, lab) in enumerate(found):
            if lab != label:
                continue
            section = text[end:found[i + 1][0] if i + 1 < len(found) else len(text)]
            m = _OLD_END.search(section)
            chunk = (section[: m.start()] if m else section).strip()
            chunk = re.sub(r"^(?:\*\*|__)+|(?:\*\*|__)+$", "", chunk).strip()
            if chunk:
                fields[label] = chunk
                break
    return fields


# ---------------------------------------------------------------- inputs


def real_pairs() -> list[tuple[str, str]]:
    """(instruction, answer) pairs: real Alpaca records when the shared data is there."""
    if DATA.exists():
        records = json.loads(DATA.read_text())[:400:20]
        return [(r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), r["output"])
                for r in records]
    return [("Give three tips for staying healthy.",
             "1. Eat a balanced diet with plenty of fruit and vegetables.\n2. Exercise "
             "regularly.\n3. Get enough sleep; most adults need seven to nine hours."),
            ("Explain why the sky is blue.",
             "Sunlight is scattered by the molecules of the air; short (blue) wavelengths "
             "scatter far more than long (red) ones, so blue light reaches us from every "
             "direction of the sky.")] * 10


CRITIQUE = (
    "1. **Why the instruction is not good:** Complexity of the topic: low; it asks for common "
    "knowledge. Level of detail required: minimal. Knowledge required: general. Ambiguity: it "
    "does not say for whom or in what setting. Logical reasoning: none is needed.\n"
    "   **Why the answer is not good:** helpfulness is limited, relevance is fine, accuracy is "
    "fine, but the level of detail is poor: each point is a few words with no explanation.\n"
    "   Because the instruction is vague and easy, the answer is short and generic.\n\n")


def instruction_reply(instruction: str, answer: str) -> str:
    """An instruction-reflection reply in the markdown-wrapped layout real oracles use."""
    harder = (f"{instruction.strip()} For each part, explain the reasoning behind it, give a "
              "concrete example, and say how a reader could check that it worked.")
    body = "\n\n".join([answer.strip()] * 3)
    return (f"{CRITIQUE}2. **New Instruction:**\n   [New Instruction] {harder} [End]\n\n"
            f"3. **New Answer:**\n   [New Answer] {body}\n\nIn short: {answer.strip()[:200]} "
            "[End]\n")


def bracketless_reply(instruction: str, answer: str) -> str:
    """Bold labels without brackets and no [End] (another layout seen in real runs)."""
    return (f"{CRITIQUE}**New Instruction:** {instruction.strip()} Answer for a beginner, step "
            f"by step.\n\n**New Answer:** {answer.strip()}\n\n{answer.strip()}\n")


def response_reply(instruction: str, answer: str) -> str:
    """A response-reflection reply with a code block inside the better answer."""
    return (f"The answer to \"{instruction.strip()[:80]}\" lacks detail and misses an example.\n\n"
            f"[Better Answer] {answer.strip()}\n\nFor example:\n```python\n"
            "def check(items):\n    return [i for i in items if i]\n```\n\n"
            f"{answer.strip()} [End]")


def normal_replies() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for i, (ins, ans) in enumerate(real_pairs()):
        make = (instruction_reply, bracketless_reply, response_reply)[i % 3]
        out.append((make(ins, ans), RES if make is response_reply else INS))
    return out


def fill(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


def one_mb_reply(size: int) -> str:
    """A 1 MB instruction-reflection reply: a very long answer of real text."""
    answer = "\n\n".join(a for _, a in real_pairs())
    # instruction_reply writes the answer three times
    return instruction_reply("Explain the records below in detail.",
                             fill(answer + "\n\n", size // 3))


def marker_worst(size: int) -> dict[str, str]:
    b = " " * size
    return {
        "blanks after a label": "New Instruction" + b + "x",
        "blanks before a label": b + "New Instruction:",
        "blank lines, label, blanks": "1." + "\n" * (size // 2) + "New Answer" + " " * (size // 2)
                                      + ":",
        "label + 50 blanks, repeated": fill("New Instruction" + " " * 50 + "\n", size),
        "label + blank/newline run": "New Instruction" + " \n" * (size // 2) + "x",
        "[ + blanks": "[" + b + "New",
        "End after blank lines": "[New Answer] a" + "\n" * size + "end",
        "dense line markers": fill("New Instruction:\n", size),
        "dense [markers][End]": fill("[New Instruction][End]", size),
        "near-miss End lines": "[New Answer] a\n" + fill("x    end\n", size),
        "near-miss labels": fill("x    New Answer:\n", size),
    }


REFLECTION = ("<thinking>\nThe coin is put in a cup, the cup on the bed, then the cup is turned "
              "upside down. A loose coin falls out of an inverted cup.\n```python\nstate = "
              "{'coin': 'cup'}\nstate['coin'] = 'bed'\n```\n<reflection>\nI first said the "
              "floor; the cup was turned over on the bed, so the coin is on the bed.\n"
              "</reflection>\nSo the coin lies on the bed, under the cup.\n</thinking>\n"
              "<output>\nThe coin is on the bed, under the upside-down cup.\n</output>")


def reflection_worst(size: int) -> dict[str, str]:
    tag = "<output>x</output>\n"
    return {
        "blanks after <": tag + "<" + " " * size + "x",
        "unclosed fence, long": tag + "`" * 1000 + "\n" + fill("a\n", size),
        "backtick run": tag + "`" * size,
        "blank lines in thinking": "<thinking>" + "\n" * size + "</thinking>" + tag,
        "dense fence lines": tag + fill("   ```\n", size),
        "dense tags": fill("<output>", size),
    }


JUDGE = ["8 7\nAssistant 1 gave a more detailed answer covering both parts of the question, "
         "while Assistant 2 missed the second part and made a small error about dates.",
         "Assistant 1 lists three tips without explaining them.\n\nAssistant 2 explains each "
         "tip and how to start.\n\nTherefore I give Assistant 1 a score of 3 out of 10, and "
         "Assistant 2 a score of 10 out of 10.",
         "Assistant 1:\nScore: 6/10\nCorrect but short.\n\nAssistant 2:\nScore: 8/10\nDetailed.",
         "**Assistant 1:** 6/10 | **Assistant 2:** 9/10\nBoth are relevant."]


def judge_worst(size: int) -> dict[str, str]:
    return {
        "blanks after a label": "Assistant 1 " + " " * size + "x",
        "blanks after a score": "8" + " " * size + "x",
        "blank lines": "x\n" + "\n" * size,
        "dense labelled scores": fill("Assistant 1: 8, ", size),
        "dense headings": fill("Assistant 1:\n", size),
    }


# ---------------------------------------------------------------- timing


@dataclass
class Case:
    group: str
    name: str
    texts: list[str]
    parse: Callable[[str], object]
    times: list[float] = field(default_factory=list)

    @property
    def kb(self) -> float:
        return sum(len(t) for t in self.texts) / 1024

    def run(self, reps: int) -> None:
        start = time.perf_counter()
        for _ in range(reps):
            for text in self.texts:
                self.parse(text)
        self.times.append((time.perf_counter() - start) / reps)

    def ms_per_kb(self) -> float:
        return statistics.median(self.times) * 1000 / self.kb


def marker_parser(labels: tuple[str, ...]) -> Callable[[str], object]:
    return lambda t: parse_sections(t, labels, ECHO)


def cases(size: int) -> list[Case]:
    normal = normal_replies()
    out = [Case("marker", "normal replies", [t for t, _ in normal], lambda t: None)]
    by_text = dict(normal)
    out[0].parse = lambda t: parse_sections(t, by_text[t], ECHO)
    out.append(Case("marker", "1 MB reply (real text)", [one_mb_reply(size)], marker_parser(INS)))
    for name, text in marker_worst(size).items():
        out.append(Case("marker", name, [text], marker_parser(INS)))
    out.append(Case("marker", "(context: json.loads of the reply)", [json.dumps(
        {"choices": [{"message": {"content": one_mb_reply(size)}}]})], json.loads))

    def reflect(t: str) -> object:
        return canonical_reflection(parse_reflection(t))

    out.append(Case("tags", "normal replies", [REFLECTION], reflect))
    for name, text in reflection_worst(size).items():
        out.append(Case("tags", name, [text], reflect))
    out.append(Case("judge", "normal replies", JUDGE, parse_scores))
    for name, text in judge_worst(size).items():
        out.append(Case("judge", name, [text], parse_scores))
    return out


def baseline_cases() -> list[Case]:
    """BASELINE: the old marker parser, on normal replies and on blank runs it can finish."""
    normal = normal_replies()
    by_text = dict(normal)
    out = [Case("old marker parser", "normal replies", [t for t, _ in normal],
                lambda t: old_parse_sections(t, by_text[t]))]
    for n in (200, 400, 800):
        out.append(Case("old marker parser", f"blanks after a label ({n})",
                        ["New Instruction" + " " * n + "x"], lambda t: old_parse_sections(t, INS)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=float, default=1.0, help="size of the large inputs, in MB")
    args = ap.parse_args()
    size = int(args.mb * 1024 * 1024)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.rounds} rounds, "
          f"large inputs {args.mb:g} MB; median ms per KB")
    all_cases = cases(size) + baseline_cases()
    for _ in range(args.rounds):  # interleaved: every case once per round
        for case in all_cases:
            case.run(reps=20 if case.kb < 64 else 1)
    worst: dict[str, float] = {}
    for group in dict.fromkeys(c.group for c in all_cases):
        rows = [c for c in all_cases if c.group == group]
        normal = rows[0].ms_per_kb()
        print(f"\n{group}\n| input | KB | ms/KB | x normal |\n|---|---|---|---|")
        for c in rows:
            ratio = c.ms_per_kb() / normal
            if c is not rows[0] and not c.name.startswith("("):
                worst[group] = max(worst.get(group, 0.0), ratio)
            print(f"| {c.name} | {c.kb:,.1f} | {c.ms_per_kb():.4f} | {ratio:.2f} |")
    print()
    for group, ratio in worst.items():
        print(f"worst case / normal per KB, {group}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
