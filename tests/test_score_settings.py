"""The scorer's r(y) and input join: set from the command line or a recipe, recorded in the
score fingerprint and the experiment step's settings."""

from __future__ import annotations

import argparse

from rtune.commands import score as score_cmd
from rtune.experiment import _settings
from rtune.recipe import section_settings
from rtune.score_config import (
    AUTHORS,
    AUTHORS_REVERSE_PROMPT,
    INPUT_JOIN,
    REVERSE_PROMPT,
    ScoreConfig,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtune score")
    score_cmd.add_arguments(p)
    return p


def settings(*argv: str) -> dict[str, str]:
    return score_cmd.prompt_settings(parser().parse_args(["data.json", *argv]))


def test_defaults_are_rtunes_and_shown_in_help():
    assert settings() == {}
    config = ScoreConfig()
    assert (config.reverse_prompt, config.input_join) == (REVERSE_PROMPT, INPUT_JOIN) \
        and INPUT_JOIN == "\n\n"
    text = " ".join(parser().format_help().split())
    assert "(default: '\\n\\n')" in text and "(default: rtune's, 'Here is an answer" in text


def test_authors_compat_sets_the_authors_text_and_an_empty_join():
    assert settings("--authors-compat") == AUTHORS == {
        "reverse_prompt": AUTHORS_REVERSE_PROMPT, "input_join": ""}
    assert AUTHORS_REVERSE_PROMPT.startswith("Below is the response to an instruction, please "
                                             "guess the corresponding instruction")
    assert AUTHORS_REVERSE_PROMPT.count("{output}") == 1


def test_options_given_take_precedence_over_the_preset(tmp_path):
    path = tmp_path / "reverse.txt"
    path.write_text("Which instruction did this answer?\n{output}\n", encoding="utf-8")
    assert settings("--authors-compat", "--reverse-prompt", str(path), "--input-join",
                    "\\n--\\t\\\\") == {"reverse_prompt": path.read_text(encoding="utf-8"),
                                        "input_join": "\n--\t\\"}
    assert settings("--reverse-prompt", "Guess: {output}") == {"reverse_prompt": "Guess: {output}"}


def test_the_settings_reach_the_fingerprints():
    variants = ({}, {"input_join": ""}, {"reverse_prompt": AUTHORS_REVERSE_PROMPT}, AUTHORS)
    configs = [ScoreConfig(student="tiny", **v) for v in variants]
    assert len({c.fingerprint() for c in configs}) == len(variants)
    assert configs[1].identity()["input_join"] == ""
    assert {"reverse_prompt", "input_join"} <= set(section_settings()["score"])  # recipe keys
    # the score step's settings: at the defaults they are left out (fingerprints unchanged)
    assert not set(AUTHORS) & set(_settings(ScoreConfig().to_dict(), "score"))
    assert AUTHORS.items() <= _settings(ScoreConfig(**AUTHORS).to_dict(), "score").items()
