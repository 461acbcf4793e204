"""One endpoint configuration: every model-calling command (and a recipe's sections) refuses
a setting that cannot work the same way, before anything is made; model specs parsed once;
options built from settings fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from rtune.cli import main
from rtune.cli_fields import add_fields, settings_field, values
from rtune.endpoint_config import EndpointConfig
from rtune.errors import ConfigError
from rtune.model_spec import EMBEDDED_NAME, ModelSpec
from rtune.recycle_config import RecycleConfig
from rtune.reflect import ReflectConfig

QUESTION = {"question_id": 1, "instruction": "What is 2+2?"}


def _command_args(command: str, tmp_path: Path) -> list[str]:
    """Arguments of each model-calling command, inputs made in tmp_path, outputs under it."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Task {i}", "input": "", "output": "Done."}
                                for i in range(2)]))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(QUESTION) + "\n")
    answers = [tmp_path / f"{side}.jsonl" for side in "ab"]
    for path in answers:
        path.write_text(json.dumps({**QUESTION, "output": "4", "generator": path.stem}) + "\n")
    return {
        "recycle": ["recycle", str(data)],
        "reflect": ["reflect", str(questions), "-o", "out/answers.jsonl"],
        "generate": ["generate", "--test-set", str(questions), "-o", "out/answers.jsonl"],
        "judge": ["judge", str(answers[0]), "--vs", str(answers[1]), "-o", "out"],
    }[command]


@pytest.mark.timeout(60)  # `rtune reflect --concurrency 0` used to wait forever
@pytest.mark.parametrize("setting", [("--concurrency", "0"), ("--rpm", "-5"), ("--tpm", "0"),
                                     ("--timeout", "0")])
@pytest.mark.parametrize("command", ["recycle", "reflect", "generate", "judge"])
def test_settings_that_cannot_work_exit_2_before_anything_happens(
        command, setting, oracle_server, tmp_path, monkeypatch, capsys):
    args = _command_args(command, tmp_path)
    before = sorted(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # default run folders are made under the working directory
    oracle = "--judge" if command == "judge" else "--oracle"
    rc = main([*args, oracle, oracle_server.url, "--model", "m", *setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"rtune {command}: error: {setting[0]} must be "
                   + ("at least 1 (got 0)" if setting[0] == "--concurrency"
                      else f"greater than 0 (got {setting[1]})")]
    assert oracle_server.requests == [] and sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", ["recycle", "reflect", "generate", "judge"])
def test_a_url_without_a_served_name_is_refused_the_same_way(command, tmp_path, monkeypatch,
                                                             capsys):
    args = _command_args(command, tmp_path)
    before = sorted(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    oracle = "--judge" if command == "judge" else "--oracle"
    assert main([*args, oracle, "http://127.0.0.1:9/v1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"rtune {command}: error: --model is required with an endpoint (http://127.0.0.1:9/v1):"
        " the served model name"]
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("section", ["recycle", "generate", "judge"])
def test_a_recipe_section_refuses_concurrency_0_before_anything_happens(section, tmp_path,
                                                                       monkeypatch, capsys):
    (tmp_path / "data.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    (tmp_path / "q.jsonl").write_text(json.dumps(QUESTION) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: data.json\nmodels: {oracle: local}\narms:\n  original: original\n"
                      f"test_sets: [q.jsonl]\n{section}:\n  concurrency: 0\n")
    before = sorted(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"rtune run: error: {recipe}, line 7: {section}.concurrency: must be at least 1 "
        "(got 0)"]
    assert sorted(tmp_path.iterdir()) == before


def test_stage_settings_hold_the_endpoint_settings():
    names = {f.name for f in dataclasses.fields(EndpointConfig)}
    for cls in (RecycleConfig, ReflectConfig):
        assert names <= {f.name for f in dataclasses.fields(cls)}
    # `oracle=` is the older name of `spec`
    config = RecycleConfig(oracle="http://h/v1", model="m", concurrency=3)
    assert (config.spec, config.model_name, config.public()["oracle"]) == ("http://h/v1", "m",
                                                                          "http://h/v1")
    assert dataclasses.replace(config, spec="local", model=None).spec == "local"
    assert ReflectConfig(oracle="local:/x").endpoint() == EndpointConfig(spec="local:/x")
    with pytest.raises(ConfigError, match="--concurrency must be at least 1"):
        ReflectConfig(concurrency=0)


@pytest.mark.parametrize(("text", "kind", "path", "display", "requested"), [
    ("local", "embedded", None, EMBEDDED_NAME, "smollm2-135m-instruct"),
    ("local:", "embedded", None, EMBEDDED_NAME, "local:"),
    ("llamacpp", "llamacpp", None, EMBEDDED_NAME, "smollm2-135m-instruct"),
    ("llamacpp:/m/x.gguf", "llamacpp", "/m/x.gguf", "x", "llamacpp:/m/x.gguf"),
    ("local:/m/tiny", "local", "/m/tiny", "tiny", "local:/m/tiny"),
    ("/m/model.Q4.gguf", "local", "/m/model.Q4.gguf", "model.Q4", "/m/model.Q4.gguf"),
    ("org/name", "local", "org/name", "name", "org/name"),
])
def test_model_specs_parse_once(text, kind, path, display, requested):
    spec = ModelSpec.parse(text)
    assert (spec.kind, str(spec.path) if spec.path else None) == (kind, path)
    assert (spec.display_name, spec.request_name) == (display, requested)
    assert not spec.is_endpoint


def test_an_endpoint_spec_is_named_by_its_served_model():
    spec = ModelSpec.parse("https://api.example.com/v1", "gpt-4o")
    assert (spec.kind, spec.url, spec.is_endpoint) == ("endpoint", "https://api.example.com/v1",
                                                      True)
    assert spec.display_name == spec.request_name == "gpt-4o"
    assert spec.label() == "gpt-4o at https://api.example.com/v1"
    assert ModelSpec.parse("org/never-downloaded").is_hub_id


@dataclasses.dataclass
class _Settings:
    steps: int = settings_field(0, "how many steps")
    rate: float | None = settings_field(None, "a rate", aliases=("--old-rate",))
    name: str = settings_field("x", "a name", flag="--label", choices=("x", "y"))
    quick: bool = settings_field(False, "go fast")
    hidden: int = 3  # no help: no option


def test_options_come_from_the_fields():
    from rtune.cli import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_fields(p, _Settings)
    args = p.parse_args(["--steps", "2", "--old-rate", "0.5", "--label", "y", "--quick"])
    assert values(_Settings, args) == {"steps": 2, "rate": 0.5, "name": "y", "quick": True}
    assert values(_Settings, p.parse_args([])) == {"steps": 0, "rate": None, "name": "x",
                                                   "quick": False}
    text = " ".join(p.format_help().split())
    assert "how many steps (default: 0)" in text and "--old-rate" not in text
    assert "--hidden" not in text


def test_a_package_verb_runs_its_stage(oracle_server):
    import rtune

    [result] = rtune.reflect(["What is 2+2?"], oracle=oracle_server.url, model="m",
                             concurrency=2)
    assert result["question"] == "What is 2+2?" and result["model"] == "m"
    assert [r["model"] for r in oracle_server.requests] == ["m"]
