"""The marker parser on what real oracles write, and fuzzed: it never raises."""

from hypothesis import given, settings
from hypothesis import strategies as st

from rtune.parse import parse_sections

INS = ("New Instruction", "New Answer")
ECHO = ("your new instruction", "your new answer")


def test_plain_markers():
    r = parse_sections("Critique...\n[New Instruction] Do X. [End]\n[New Answer] X is done. [End]",
                       INS, ECHO)
    assert r.ok
    assert r.fields == {"New Instruction": "Do X.", "New Answer": "X is done."}


def test_markdown_heading_then_bracketed_marker():
    text = ("1. **Critique:** the instruction is vague.\n\n"
            "2. **New Instruction:**\n   [New Instruction] Explain photosynthesis step by step. [End]\n\n"
            "3. **New Answer:**\n   [New Answer] Plants capture light...\n   in chloroplasts. [End]")
    r = parse_sections(text, INS, ECHO)
    assert r.fields["New Instruction"] == "Explain photosynthesis step by step."
    assert r.fields["New Answer"].startswith("Plants capture light")
    assert r.fields["New Answer"].endswith("in chloroplasts.")


def test_bracketless_bold_labels_and_missing_end():
    text = ("**New Instruction:** Compare TCP and UDP for video streaming.\n\n"
            "**New Answer:** TCP retransmits lost packets, UDP does not.")
    r = parse_sections(text, INS, ECHO)
    assert r.fields["New Instruction"] == "Compare TCP and UDP for video streaming."
    assert r.fields["New Answer"] == "TCP retransmits lost packets, UDP does not."


def test_heading_style_and_numbered_list():
    text = "### New Instruction\nWrite a haiku about rain.\n### New Answer\nSoft rain on the roof"
    r = parse_sections(text, INS, ECHO)
    assert r.fields == {"New Instruction": "Write a haiku about rain.",
                        "New Answer": "Soft rain on the roof"}


def test_template_echo_then_real_content_takes_the_real_one():
    text = ("I will use the layout [New Instruction] your new instruction [End].\n"
            "[New Instruction] List three prime numbers above 100. [End]\n"
            "[New Answer] 101, 103 and 107. [End]")
    r = parse_sections(text, INS, ECHO)
    assert r.fields["New Instruction"] == "List three prime numbers above 100."


def test_echo_only_and_na_and_missing_are_reasons():
    r = parse_sections("[New Instruction] your new instruction [End]\n[New Answer] N/A [End]",
                       INS, ECHO)
    assert r.fields == {"New Instruction": None, "New Answer": None}
    assert r.reasons == {"New Instruction": "template_echo", "New Answer": "not_applicable"}
    r = parse_sections("I cannot do that.", INS, ECHO)
    assert r.reasons == {"New Instruction": "missing", "New Answer": "missing"}
    r = parse_sections("", INS, ECHO)
    assert r.reasons["New Answer"] == "empty_reply"


def test_prose_mentioning_the_label_is_not_a_marker():
    r = parse_sections("The new instruction is better because it is harder.", INS, ECHO)
    assert r.reasons["New Instruction"] == "missing"


def test_multiline_answer_with_code_is_kept_whole():
    text = "[Better Answer] Use a loop:\n```python\nfor i in range(3):\n    print(i)\n```\n[End]"
    r = parse_sections(text, ("Better Answer",))
    assert "for i in range(3):" in r.fields["Better Answer"]
    assert r.fields["Better Answer"].endswith("```")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]*#:-_`\n /New InstructioAswrEdN1.")), max_size=300))
def test_fuzz_never_raises(text):
    r = parse_sections(text, INS, ECHO)
    assert set(r.fields) == set(INS)
    for label in INS:
        assert (r.fields[label] is None) == (label in r.reasons)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500))
def test_fuzz_any_unicode(text):
    parse_sections(text, ("Better Answer",), ("your better answer",))
