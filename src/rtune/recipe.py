"""A recipe: the whole experiment (data, models, arms, test sets, per-step settings) in YAML.

Each step's section takes the stage's own setting names and defaults (see
:mod:`rtune.recipe_schema`); settings the experiment decides itself (output folders, which
model a step runs) are refused there, naming where they are set instead. Relative paths are
read from the recipe file's folder (given with ``--set``: from the current directory); the
experiment folder defaults to ``runs/<name>`` under the current directory. Every error names the file, the line and the key, on one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model_spec import ModelSpec
from .recipe_schema import Mismatch, Setting, check, dataclass_settings, signature_settings
from .recipe_schema import type_name as _type_name
from .recipe_yaml import Document, Key, RecipeError, apply_override, dotted, load_document

# The Cherry_LLM / Reflection-Tuning evaluation files, by name: <name>_test_set.jsonl
TEST_SET_NAMES = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
# What an arm can train on besides a file: the source records, the selection, or every
# candidate of one kind.
ARM_SOURCES = ("original", "selected")
PATH_SETTINGS = ("prompts_dir", "prices_file", "include_path")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# section -> setting -> where that setting comes from instead
SET_ELSEWHERE: dict[str, dict[str, str]] = {
    "recycle": {"spec": "models.oracle", "oracle": "models.oracle", "model": "models.oracle",
                "api_key_env": "models.oracle", "progress": "the experiment"},
    "score": {"student": "models.student",
              "force": "the experiment (a changed setting rescores)"},
    "select": {"source": "the experiment", "store": "the experiment"},
    "train": {"model": "models.base_model", "output_dir": "the experiment (OUT/models/ARM)",
              "resume": "the experiment (a killed step continues)",
              "progress_bar": "the experiment"},
    "generate": {"spec": "the arm's model", "test_sets": "test_sets", "output": "the experiment",
                 "model": "the arm's model", "name": "the arm", "run_dir": "the experiment",
                 "options": "the settings beside it", "alpaca_eval": "the experiment",
                 "progress": "the experiment", "api_key_env": "the arm's model",
                 "prices": "prices_file / price_in / price_out"},
    "judge": {"paths_a": "pairs", "paths_b": "pairs", "judge_spec": "models.judge", "spec": "models.judge",
              "model": "models.judge", "run_dir": "the experiment", "out_dir": "the experiment",
              "options": "the settings beside it", "progress": "the experiment",
              "api_key_env": "models.judge", "prices": "prices_file / price_in / price_out"},
    "bench": {"model": "the arm's model", "output": "the experiment", "quiet": "the experiment",
              "log_samples": "the experiment"},
}
TOP_LEVEL = ("name", "description", "data", "out", "models", "arms", "pairs", "test_sets",
             "test_set_dir", "recycle", "score", "select", "train", "generate", "judge", "bench")
MODEL_ROLES = ("oracle", "student", "base_model", "judge")


@dataclass
class ModelRef:
    """A model: ``local`` (embedded SmolLM2), ``local:/path``, a folder, a .gguf file, a Hub id
    in the local cache, or an OpenAI-compatible base URL with the served ``model`` name."""

    spec: str
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    @property
    def parsed(self) -> ModelSpec:
        return ModelSpec.parse(self.spec, self.model)

    @property
    def is_endpoint(self) -> bool:
        return self.parsed.is_endpoint

    def label(self) -> str:
        return self.parsed.label()


@dataclass
class Arm:
    name: str
    data: str  # an ARM_SOURCES name, a candidate kind, or an absolute file path
    train: Any  # TrainConfig (output_dir left for the experiment)


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    data: Path
    out: Path
    oracle: ModelRef
    student: ModelRef
    base_model: ModelRef
    judge_model: ModelRef
    arms: dict[str, Arm]
    pairs: list[tuple[str, str]]
    test_sets: list[Path]
    recycle: Any  # RecycleConfig
    score: Any  # ScoreConfig
    select: dict[str, Any]
    generate: dict[str, Any]  # generate() keywords and EndpointConfig fields
    judge: dict[str, Any]  # judge() keywords, EndpointConfig fields, prices
    bench: dict[str, Any] | None
    resolved: dict[str, Any]  # every setting, defaults included (for experiment.json)
    doc: Document
    problems: list[str] = field(default_factory=list)  # missing files (dry-run only)


@functools.lru_cache(maxsize=1)
def section_settings() -> dict[str, dict[str, Setting]]:
    """Each step section's settings: names, types and defaults from the stage itself."""
    from .bench import BenchConfig
    from .generate import GenerateConfig
    from .judge import JudgeConfig
    from .recycle_config import RecycleConfig
    from .score_config import ScoreConfig
    from .select import select
    from .train_config import TrainConfig

    skip = SET_ELSEWHERE
    price_keys = ("prices_file", "price_in", "price_out")
    return {
        "recycle": dataclass_settings(RecycleConfig, exclude=skip["recycle"]),
        "score": dataclass_settings(ScoreConfig, exclude=skip["score"]),
        "select": signature_settings(select, exclude=skip["select"]),
        "train": dataclass_settings(TrainConfig, exclude=skip["train"]),
        "generate": dataclass_settings(GenerateConfig, exclude=(
            *skip["generate"], "spec", "replicas", *price_keys)),
        "judge": dataclass_settings(JudgeConfig, exclude=(*skip["judge"], "spec", "replicas")),
        "bench": dataclass_settings(BenchConfig, exclude=skip["bench"]),
    }


def load_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
                out: str | Path | None = None, missing_ok: bool = False) -> Recipe:
    """Read and check a recipe. ``overrides``: ``KEY=VALUE`` strings (``--set``).
    ``missing_ok``: list missing files in ``recipe.problems`` instead of raising (dry run)."""
    doc = load_document(path)
    for assignment in overrides:
        apply_override(doc, assignment)
    return _Reader(doc, missing_ok).recipe(out)


class _Reader:
    def __init__(self, doc: Document, missing_ok: bool):
        self.doc = doc
        self.base = doc.path.resolve().parent
        self.missing_ok = missing_ok
        self.problems: list[str] = []
        self.settings = section_settings()

    # ------------------------------------------------------------ helpers
    def err(self, key: Key, message: str) -> RecipeError:
        return self.doc.error(key, message)

    def typed(self, key: Key, value: Any, hint: Any) -> Any:
        try:
            return check(value, hint)
        except Mismatch as m:
            shown = repr(value) if not isinstance(value, (dict, list)) else ""
            raise self.err(key, f"expected {m}, got {_type_name(value)}"
                           + (f" {shown}" if shown else "")) from None

    def unknown(self, key: Key, known: list[str], elsewhere: dict[str, str] | None = None
                ) -> RecipeError:
        name = str(key[-1])
        if elsewhere and name in elsewhere:
            return self.err(key, f"is set by {elsewhere[name]}, not here")
        close = difflib.get_close_matches(name, known, 1, 0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
        return self.err(key, "unknown key" + hint)

    def mapping(self, key: Key, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, f"expected a mapping, got {_type_name(value)}")
        return value

    def base_for(self, key: Key) -> Path:
        """Relative paths: from the recipe's folder; given with --set, from the current one."""
        return Path.cwd() if self.doc.from_command_line(key) else self.base

    def path(self, key: Key, value: str, *, kind: str = "file") -> Path:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else self.base_for(key) / p
        p = Path(_normalise(p))
        if not p.exists():
            message = f"{kind} not found: {p}"
            if not self.missing_ok:
                raise self.err(key, message)
            self.problems.append(f"{self.doc.where(key)}: {dotted(key)}: {message}")
        return p

    def section(self, name: str, raw: Any, key: Key | None = None) -> dict[str, Any]:
        """The settings written in a section, type-checked (defaults are not filled in)."""
        key = key or (name,)
        settings = self.settings[name]
        values: dict[str, Any] = {}
        for setting, value in self.mapping(key, raw).items():
            if setting not in settings:
                raise self.unknown((*key, setting), list(settings), SET_ELSEWHERE.get(name))
            value = self.typed((*key, setting), value, settings[setting].hint)
            if setting in PATH_SETTINGS and value is not None:
                paths = [value] if isinstance(value, str) else list(value)
                resolved = [str(self.path((*key, setting), v, kind="path")) for v in paths]
                value = resolved[0] if isinstance(value, str) else resolved
            values[setting] = value
        for setting in settings.values():
            if setting.required and setting.name not in values:
                raise self.err(key, f"missing required key '{setting.name}'")
        return values

    def full(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Every setting of a keyword section: the written ones, else the stage's default."""
        return {s.name: values.get(s.name, s.default) for s in self.settings[name].values()
                if not s.required or s.name in values}

    def build(self, key: Key, factory: Any, **kwargs: Any) -> Any:
        try:
            return factory(**kwargs)
        except ConfigError as e:
            raise self.config_error(key, e) from None

    def config_error(self, key: Key, e: ConfigError) -> RecipeError:
        """A stage's own check failed; its message names a CLI option (``--stages: ...``):
        point at that setting's line when the recipe wrote it."""
        text = str(e)
        m = re.match(r"--([a-z0-9-]+):? ", text)
        if m and (*key, m.group(1).replace("-", "_")) in self.doc.lines:
            return self.err((*key, m.group(1).replace("-", "_")), text[m.end():])
        return self.err(key, text)

    def check_endpoint(self, name: str, values: dict[str, Any], **model: Any) -> None:
        """The endpoint settings of a keyword section, checked as its command checks them."""
        from .endpoint_config import EndpointConfig

        names = {f.name for f in dataclasses.fields(EndpointConfig)}
        self.build((name,), EndpointConfig, **{k: v for k, v in values.items() if k in names},
                   **model)

    # ------------------------------------------------------------ parts
    def model_ref(self, role: str, raw: Any, default: ModelRef) -> ModelRef:
        key: Key = ("models", role)
        if raw is None:
            return default
        if isinstance(raw, str):
            raw = {"spec": raw}
        settings = dataclass_settings(ModelRef)
        values = {}
        for name, value in self.mapping(key, raw).items():
            if name not in settings:
                raise self.unknown((*key, name), list(settings))
            values[name] = self.typed((*key, name), value, settings[name].hint)
        if "spec" not in values:
            raise self.err(key, "missing required key 'spec' (local, a model folder, or an "
                           "http(s):// base URL)")
        ref = ModelRef(**values)
        if ref.is_endpoint and not ref.model:
            raise self.err(key, "an endpoint needs 'model' (the served model name)")
        ref.spec = self.model_spec((*key, "spec") if (*key, "spec") in self.doc.lines else key,
                                   ref.spec)
        return ref

    def model_spec(self, key: Key, spec: str) -> str:
        """Paths become absolute (from the recipe's folder); names and URLs stay as they are."""
        parsed = ModelSpec.parse(spec)
        if parsed.is_endpoint or parsed.path is None:
            return spec
        prefix = ""
        rest = spec
        if parsed.kind == "llamacpp" or spec.startswith("local:"):
            prefix, rest = spec[:spec.index(":") + 1], spec[spec.index(":") + 1:]
        if prefix or rest.startswith(("/", "./", "../", "~")) or \
                (self.base_for(key) / rest).exists():
            return prefix + str(self.path(key, rest, kind="model"))
        return spec  # a Hub id, looked up in the local Hugging Face cache when it is needed

    def arms(self, raw: Any, train_values: dict[str, Any], produced: set[str]) -> dict[str, Arm]:
        from .records import KINDS
        from .train_config import TrainConfig

        arms_raw = self.mapping(("arms",), raw)
        if not arms_raw:
            raise self.err(("arms",) if "arms" in self.doc.data else (),
                           "name at least one arm to train, e.g. arms: {original: original, "
                           "recycled: selected}")
        arms = {}
        for name, spec in arms_raw.items():
            key: Key = ("arms", name)
            if not _NAME.fullmatch(name):
                raise self.err(key, "arm names use letters, digits, '_', '-' and '.'")
            spec = {"data": spec} if isinstance(spec, str) else self.mapping(key, spec)
            for k in spec:
                if k not in ("data", "train"):
                    raise self.unknown((*key, k), ["data", "train"])
            if "data" not in spec:
                raise self.err(key, "missing required key 'data' (original, selected, a "
                               "candidate kind or a file)")
            dkey = (*key, "data") if (*key, "data") in self.doc.lines else key
            data = self.typed(dkey, spec["data"], str)
            if data in ARM_SOURCES or data in KINDS:
                data = "original" if data == "orig" else data
                if data not in ARM_SOURCES and data not in produced:
                    raise self.err(dkey, f"'{data}' candidates are not made by recycle.stages "
                                   f"({', '.join(sorted(produced)) or 'none'})")
            else:
                data = str(self.path(dkey, data))
            own = self.section("train", spec.get("train"), (*key, "train"))
            config = self.build((*key, "train") if own else ("train",), TrainConfig,
                                **{**train_values, **own})
            config.output_dir = str(Path("models") / name)
            try:
                config.validate()
            except ConfigError as e:
                raise self.config_error((*key, "train") if own else ("train",), e) from None
            arms[name] = Arm(name, data, config)
        return arms

    def pairs(self, raw: Any, arms: dict[str, Arm]) -> list[tuple[str, str]]:
        names = list(arms)
        if raw is None:
            return [(a, names[0]) for a in names[1:]]
        if not isinstance(raw, list):
            raise self.err(("pairs",), "expected a list of [A, B] pairs")
        out = []
        for n, item in enumerate(raw):
            key: Key = ("pairs", n)
            if isinstance(item, str):
                parts = [p.strip() for p in re.split(r"\s+vs\.?\s+", item)]
            elif isinstance(item, list):
                parts = item
            else:
                raise self.err(key, f"expected [A, B] or 'A vs B', got {_type_name(item)}")
            if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
                raise self.err(key, "expected two arm names, [A, B] or 'A vs B'")
            for p in parts:
                if p not in arms:
                    raise self.err(key, f"no arm named '{p}' (arms: {', '.join(names)})")
            if parts[0] == parts[1]:
                raise self.err(key, "an arm cannot be judged against itself")
            out.append((parts[0], parts[1]))
        return out

    def test_sets(self, raw: Any, folder: Path | None) -> list[Path]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.err(("test_sets",), "expected a list of test-set files or names")
        out = []
        for n, item in enumerate(raw):
            key: Key = ("test_sets", n)
            item = self.typed(key, item, str)
            if item.lower() in TEST_SET_NAMES and not (self.base_for(key) / item).exists():
                if folder is None:
                    raise self.err(key, f"'{item}' is a test-set name: set test_set_dir to the "
                                   f"folder holding {item.lower()}_test_set.jsonl")
                item = str(folder / f"{item.lower()}_test_set.jsonl")
            out.append(self.path(key, item, kind="test set"))
        names = [p.name for p in out]
        for n, name in enumerate(names):
            if name in names[:n]:
                raise self.err(("test_sets", n), f"test set {name} is listed twice")
        return out

    # ------------------------------------------------------------ the recipe
    def recipe(self, out: str | Path | None) -> Recipe:
        from .recycle_config import STAGE_KIND, RecycleConfig
        from .score_config import ScoreConfig
        from .select import POLICIES
        from .train_config import TrainConfig

        d = self.doc.data
        for name in d:
            if name not in TOP_LEVEL:
                raise self.unknown((name,), list(TOP_LEVEL))
        name = self.typed(("name",), d.get("name", self.doc.path.stem), str)
        if not _NAME.fullmatch(name):
            raise self.err(("name",), "use letters, digits, '_', '-' and '.'")
        description = self.typed(("description",), d.get("description", ""), str)
        if "data" not in d:
            raise self.err((), "missing required key 'data' (the dataset to recycle)")
        data = self.path(("data",), self.typed(("data",), d["data"], str), kind="data file")

        models_raw = self.mapping(("models",), d.get("models"))
        for role in models_raw:
            if role not in MODEL_ROLES:
                raise self.unknown(("models", role), list(MODEL_ROLES))
        rdef, sdef, tdef = RecycleConfig(), ScoreConfig(), TrainConfig()
        oracle = self.model_ref("oracle", models_raw.get("oracle"),
                                ModelRef(rdef.spec, rdef.model, rdef.api_key_env))
        student = self.model_ref("student", models_raw.get("student"), ModelRef(sdef.student))
        base_model = self.model_ref("base_model", models_raw.get("base_model"),
                                    ModelRef(tdef.model))
        judge_model = self.model_ref("judge", models_raw.get("judge"),
                                     dataclasses.replace(oracle))

        rvalues = self.section("recycle", d.get("recycle"))
        recycle = self.build(("recycle",), RecycleConfig, **rvalues, oracle=oracle.spec,
                             model=oracle.model, api_key_env=oracle.api_key_env)
        svalues = self.section("score", d.get("score"))
        score = self.build(("score",), ScoreConfig, **svalues, student=student.spec)
        try:
            score.validate()
        except ConfigError as e:
            raise self.config_error(("score",), e) from None
        select = self.full("select", self.section("select", d.get("select")))
        if select["policy"] not in POLICIES:
            raise self.err(("select", "policy"), f"unknown policy {select['policy']!r} "
                           f"(choose from {', '.join(POLICIES)})")
        if select["metric"] not in ("ppl", "loss"):
            raise self.err(("select", "metric"), "choose ppl or loss")

        train_values = self.section("train", d.get("train"))
        train = _train_dict(self.build(("train",), TrainConfig, **train_values))
        produced = {"orig"} | {STAGE_KIND[s] for s in recycle.stages}
        arms = self.arms(d.get("arms"), train_values, produced)
        pairs = self.pairs(d.get("pairs"), arms)
        folder = None
        if d.get("test_set_dir") is not None:
            folder = self.path(("test_set_dir",), self.typed(("test_set_dir",),
                                                             d["test_set_dir"], str),
                               kind="folder")
        test_sets = self.test_sets(d.get("test_sets"), folder)
        if pairs and not test_sets:
            raise self.err(("pairs",) if "pairs" in d else ("arms",),
                           "judging needs test_sets (the questions both arms answer)")
        generate = self.full("generate", self.section("generate", d.get("generate")))
        judge = self.full("judge", self.section("judge", d.get("judge")))
        self.check_endpoint("generate", generate)
        self.check_endpoint("judge", judge, spec=judge_model.spec, model=judge_model.model)
        bench = None
        if d.get("bench") is not None:
            bench = self.full("bench", self.section("bench", d.get("bench")))
        if out is not None:
            out_dir = Path(out)
        elif d.get("out") is not None:
            out_dir = self.base_for(("out",)) / self.typed(("out",), d["out"], str)
        else:
            out_dir = Path("runs") / name

        resolved = {
            "name": name, "description": description, "data": str(data),
            "models": {r: dataclasses.asdict(m) for r, m in
                       zip(MODEL_ROLES, (oracle, student, base_model, judge_model))},
            "arms": {a.name: {"data": a.data, "train": _train_dict(a.train)}
                     for a in arms.values()},
            "pairs": [list(p) for p in pairs], "test_sets": [str(p) for p in test_sets],
            "recycle": recycle.public(), "score": score.to_dict(), "select": select,
            "train": train,
            "generate": generate, "judge": judge, "bench": bench}
        return Recipe(self.doc.path, name, description, data, out_dir, oracle, student,
                      base_model, judge_model, arms, pairs, test_sets, recycle, score, select,
                      generate, judge, bench, resolved, self.doc, self.problems)


def _train_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    for k in SET_ELSEWHERE["train"]:
        d.pop(k, None)
    return d


def _normalise(p: Path) -> str:
    import os

    return os.path.normpath(str(p))
