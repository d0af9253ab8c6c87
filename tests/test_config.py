"""Strict config validation: nested dataclasses, type errors that teach, YAML quirks, dot-overrides."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from polyscale.config import (
    ConfigError,
    from_dict,
    load_config,
    load_yaml,
    merge,
    parse_overrides,
    to_dict,
    yaml_dump,
    yaml_load,
)


@dataclass
class Block:
    width: int  # required
    mults: tuple[int, ...] = (1, 2)
    pair: tuple[int, int] = (3, 3)
    act: Literal["silu", "relu"] = "silu"
    levels: Literal[1, 2] = 1
    dropout: float = 0.0
    heads: int | None = None
    legacy: Optional[float] = None  # noqa: UP045 - typing.Optional must work as well as ``X | None``


@dataclass
class Train:
    lr: float = 1e-3
    steps: int = 10
    amp: bool = False
    name: str = "run"
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    output: Path = Path("out")


@dataclass
class Experiment:
    model: Block
    train: Train = field(default_factory=Train)
    extra: Block | None = None


@dataclass
class Positive:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"n must be positive, got {self.n}")


@dataclass
class HoldsPositive:
    inner: Positive = field(default_factory=Positive)


def test_nested_from_dict_converts_yaml_forms():
    cfg = from_dict(
        Experiment,
        {
            "model": {
                "width": 8,
                "mults": [1, 2, 4],
                "pair": [5, 7],
                "dropout": 1,
                "act": "relu",
                "levels": 2,
            },
            "train": {"lr": 2, "tags": ["a", "b"], "weights": {"x": 1, "y": 0.5}, "output": "runs/a"},
            "extra": {"width": 3, "legacy": 2},
        },
    )
    assert cfg.model == Block(width=8, mults=(1, 2, 4), pair=(5, 7), act="relu", levels=2, dropout=1.0)
    assert type(cfg.model.mults) is tuple and type(cfg.model.pair) is tuple
    assert type(cfg.model.dropout) is float and type(cfg.train.lr) is float and cfg.train.lr == 2.0
    assert cfg.train.weights == {"x": 1.0, "y": 0.5} and type(cfg.train.weights["x"]) is float
    assert cfg.train.output == Path("runs/a") and cfg.train.tags == ["a", "b"]
    assert cfg.extra == Block(width=3, legacy=2.0) and type(cfg.extra.legacy) is float
    assert from_dict(Experiment, {"model": {"width": 1}, "extra": None}).extra is None


def test_defaults_and_existing_dataclass_instances():
    cfg = from_dict(Experiment, {"model": Block(width=4)})
    assert cfg.model == Block(width=4) and cfg.train == Train()


def test_unknown_nested_key_names_dotted_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, {"model": {"width": 8, "widht": 9}})
    msg = str(err.value)
    assert "model.widht" in msg and "Block" in msg
    allowed = re.search(r"allowed keys: (\[.*\])", msg).group(1)
    assert yaml.safe_load(allowed) == sorted(
        ["width", "mults", "pair", "act", "levels", "dropout", "heads", "legacy"]
    )


def test_unknown_keys_all_listed_and_top_level_has_no_prefix():
    with pytest.raises(
        ConfigError, match=r"unknown keys modle, trian in Experiment; allowed keys: \['extra'"
    ):
        from_dict(Experiment, {"modle": {}, "trian": {}})
    with pytest.raises(ConfigError, match=r"unknown key run\.train\.epochs in Train"):
        from_dict(Train, {"epochs": 3}, where="run.train")


def test_unknown_key_inside_optional_nested_dataclass_is_reported_precisely():
    with pytest.raises(ConfigError, match=r"unknown key extra\.heigth in Block"):
        from_dict(Experiment, {"model": {"width": 1}, "extra": {"width": 1, "heigth": 2}})


@pytest.mark.parametrize(
    "data, key, expected, received",
    [
        ({"model": {"width": True}}, "model.width", "expected int", "True (bool)"),
        ({"model": {"width": 2.0}}, "model.width", "expected int", "2.0 (float)"),
        ({"model": {"width": "8"}}, "model.width", "expected int", "'8' (str)"),
        ({"model": {"width": 1, "dropout": True}}, "model.dropout", "expected float", "True (bool)"),
        ({"model": {"width": 1, "dropout": "1e-3x"}}, "model.dropout", "expected float", "'1e-3x' (str)"),
        ({"model": {"width": 1}, "train": {"amp": 1}}, "train.amp", "expected bool", "1 (int)"),
        ({"model": {"width": 1}, "train": {"name": 3}}, "train.name", "expected str", "3 (int)"),
        ({"model": {"width": 1, "act": "gelu"}}, "model.act", "one of ['silu', 'relu']", "'gelu'"),
        ({"model": {"width": 1, "levels": True}}, "model.levels", "one of [1, 2]", "True (bool)"),
        ({"model": {"width": 1, "levels": 1.0}}, "model.levels", "one of [1, 2]", "1.0 (float)"),
        ({"model": {"width": 1, "pair": [1, 2, 3]}}, "model.pair", "expected 2 items", "[1, 2, 3]"),
        ({"model": {"width": 1, "pair": 4}}, "model.pair", "expected a list", "4 (int)"),
        ({"model": {"width": 1, "mults": [1, "a"]}}, "model.mults[1]", "expected int", "'a' (str)"),
        ({"model": {"width": 1, "heads": 2.5}}, "model.heads", "expected int", "2.5 (float)"),
        ({"model": {"width": 1}, "train": {"tags": "a"}}, "train.tags", "expected a list", "'a' (str)"),
        (
            {"model": {"width": 1}, "train": {"weights": {"x": "y"}}},
            "train.weights.x",
            "expected float",
            "'y'",
        ),
        ({"model": {"width": 1}, "train": {"weights": [1]}}, "train.weights", "expected a mapping", "[1]"),
        ({"model": 5}, "model", "expected a mapping of Block fields", "5 (int)"),
        ({"model": {"width": 1}, "extra": 5}, "extra", "expected a mapping of Block fields", "5 (int)"),
    ],
)
def test_type_errors_name_key_expected_type_and_value(data, key, expected, received):
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, data)
    msg = str(err.value)
    assert msg.startswith(f"{key}:"), msg
    assert expected in msg and received in msg, msg


def test_none_for_optional_hint_and_none_rejected_for_required_type():
    with pytest.raises(ConfigError, match=r"write null for None"):
        from_dict(Block, {"width": 1, "heads": "None"})
    with pytest.raises(ConfigError, match=r"width: expected int, got None"):
        from_dict(Block, {"width": None})


def test_missing_required_fields_are_named():
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['model'\] of Experiment"):
        from_dict(Experiment, {})
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['model.width'\] of Block"):
        from_dict(Experiment, {"model": {}})


def test_post_init_value_errors_become_config_errors_with_location():
    with pytest.raises(ConfigError, match=r"^inner: n must be positive, got 0$"):
        from_dict(HoldsPositive, {"inner": {"n": 0}})


def test_non_dataclass_and_non_mapping_inputs():
    with pytest.raises(TypeError, match="dataclass type"):
        from_dict(dict, {})
    with pytest.raises(ConfigError, match=r"Train: expected a mapping of Train fields, got \[1\] \(list\)"):
        from_dict(Train, [1])


def test_to_dict_is_json_and_yaml_safe_and_round_trips():
    cfg = Experiment(model=Block(width=4, mults=(1, 3)), train=Train(tags=["x"], output=Path("a/b")))
    plain = to_dict(cfg)
    assert plain["model"]["mults"] == [1, 3] and plain["model"]["pair"] == [3, 3]
    assert plain["train"]["output"] == "a/b"
    assert json.loads(json.dumps(plain)) == plain
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # safe_dump refuses tuples/Paths: none left
    assert from_dict(Experiment, plain) == cfg


_blocks = st.builds(
    Block,
    width=st.integers(-(2**40), 2**40),
    mults=st.lists(st.integers(0, 9), max_size=4).map(tuple),
    pair=st.tuples(st.integers(), st.integers()),
    act=st.sampled_from(["silu", "relu"]),
    levels=st.sampled_from([1, 2]),
    dropout=st.floats(allow_nan=False),
    heads=st.none() | st.integers(1, 64),
    legacy=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
_trains = st.builds(
    Train,
    lr=st.floats(allow_nan=False, allow_infinity=False),
    steps=st.integers(0, 10**9),
    amp=st.booleans(),
    name=st.text(max_size=12),
    tags=st.lists(st.text(max_size=5), max_size=3),
    weights=st.dictionaries(
        st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), max_size=3
    ),
)


@settings(max_examples=60, deadline=None)
@given(cfg=st.builds(Experiment, model=_blocks, train=_trains, extra=st.none() | _blocks))
def test_property_yaml_and_json_round_trip(cfg: Experiment):
    # oracle: equality with the original object after serialising through both formats
    assert from_dict(Experiment, yaml_load(yaml_dump(to_dict(cfg)))) == cfg
    assert from_dict(Experiment, json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize("text", ["1e3", "-2E+4", "1e-3", "+1.5e2", ".5e1", "1.e2", "1.0e3", "1_0e1", "7.25"])
def test_yaml_exponent_floats_are_floats(text):
    # oracle: Python's float(); plain PyYAML (YAML 1.1) would return most of these as strings
    value = yaml_load(text)
    assert type(value) is float and value == float(text.replace("_", ""))


@pytest.mark.parametrize(
    "text, expected", [("12", 12), ("1_000", 1000), ("1e", "1e"), ("e3", "e3"), ("1e3x", "1e3x")]
)
def test_yaml_non_floats_unchanged(text, expected):
    value = yaml_load(text)
    assert value == expected and type(value) is type(expected)


def test_yaml_dump_quotes_strings_that_read_back_as_exponent_floats():
    # hypothesis found "0E0": plain safe_dump leaves it bare, and yaml_load then reads a float
    for text in ("0E0", "1e3", "-2E+4", "plain"):
        assert yaml_load(yaml_dump({"name": text})) == {"name": text}
    assert yaml_load(yaml_dump({"x": 1e3})) == {"x": 1000.0}


def test_yaml_nan_and_inf_still_parse():
    assert math.isnan(yaml_load(".nan")) and yaml_load("-.inf") == -math.inf


def test_yaml_duplicate_key_is_an_error_but_merge_keys_work(tmp_path: Path):
    assert yaml_load("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  width: 8\n  act: relu\n  width: 16\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml line 4, column 3: .*duplicate key 'width'.*line 2"):
        load_yaml(path)


def test_parse_overrides_nested_and_typed():
    got = parse_overrides(
        [
            "model.base_channels=64",
            "train.lr=1e-3",
            "model.channel_mults=[1,2,2]",
            "train.amp=true",
            "model.heads=null",
            "train.name=hello world",
            "train.empty=",
            " train.steps = 5",
            "model.base_channels=32",
            "a.b.c={x: 1}",
        ]
    )
    assert got == {
        "model": {"base_channels": 32, "channel_mults": [1, 2, 2], "heads": None},
        "train": {"lr": 0.001, "amp": True, "name": "hello world", "empty": "", "steps": 5},
        "a": {"b": {"c": {"x": 1}}},
    }
    assert type(got["train"]["lr"]) is float


@pytest.mark.parametrize("item", ["model.base_channels", "=3", "model..x=1", ".x=1", "x.=1"])
def test_parse_overrides_malformed_shows_expected_form(item):
    with pytest.raises(ConfigError, match=r"is not of the form section\.key=value"):
        parse_overrides([item])


def test_parse_overrides_conflicts_and_bad_values():
    with pytest.raises(ConfigError, match=r"sets a key inside 'model'"):
        parse_overrides(["model=3", "model.width=2"])
    with pytest.raises(ConfigError, match=r"replaces keys set by earlier overrides of model\.\*"):
        parse_overrides(["model.width=2", "model=3"])
    assert parse_overrides(["model.width=2", "model={act: relu}"]) == {"model": {"width": 2, "act": "relu"}}
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        parse_overrides(["model.mults=[1,2"])
    with pytest.raises(ConfigError, match="list of 'section.key=value' strings"):
        parse_overrides("model.width=2")


def test_merge_is_deep_and_does_not_alias_or_mutate():
    base = {"model": {"width": 8, "mults": [1, 2]}, "train": {"lr": 0.1}, "keep": [1]}
    update = {"model": {"width": 16}, "train": 5, "new": {"a": [1]}}
    out = merge(base, update)
    assert out == {"model": {"width": 16, "mults": [1, 2]}, "train": 5, "keep": [1], "new": {"a": [1]}}
    out["model"]["mults"].append(3)
    out["keep"].append(2)
    out["new"]["a"].append(2)
    assert base == {"model": {"width": 8, "mults": [1, 2]}, "train": {"lr": 0.1}, "keep": [1]}
    assert update == {"model": {"width": 16}, "train": 5, "new": {"a": [1]}}


def test_load_config_yaml_with_overrides(tmp_path: Path):
    path = tmp_path / "preset.yaml"
    path.write_text("model:\n  width: 8\n  mults: [1, 2]\ntrain:\n  lr: 2e-4\n  steps: 100\n")
    cfg = load_config(Experiment, path, ["model.mults=[1,2,4]", "train.lr=1e-3", "extra.width=2"])
    assert cfg == Experiment(
        model=Block(width=8, mults=(1, 2, 4)), train=Train(lr=1e-3, steps=100), extra=Block(2)
    )
    assert load_config(Experiment, str(path)).train.lr == 2e-4  # exponent float in the file itself
    assert load_config(Experiment, {"model": {"width": 2}}, overrides=["model.width=3"]).model.width == 3


def test_load_config_validation_errors_name_file_and_key(tmp_path: Path):
    path = tmp_path / "preset.yaml"
    path.write_text("model:\n  width: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, path, ["model.widht=3"])
    msg = str(err.value)
    assert str(path) in msg and "model.widht" in msg and "'width'" in msg and "overrides" in msg
    with pytest.raises(ConfigError, match=r"train\.steps: expected int, got 'many' \(str\)"):
        load_config(Experiment, path, ["train.steps=many"])


def test_yaml_file_round_trip(tmp_path: Path):
    cfg = Experiment(model=Block(width=5, pair=(1, 2), act="relu"), train=Train(lr=3e-5, tags=["t"]))
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_config(Experiment, path) == cfg


def test_load_yaml_errors(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_config(Experiment, missing)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_yaml(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  width: 8\n  mults: [1, 2\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line 4, column \d+: invalid YAML"):
        load_config(Experiment, bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level, got list"):
        load_yaml(top)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['model'\]"):
        load_config(Experiment, empty)


def test_yaml_loader_refuses_python_objects():
    with pytest.raises(yaml.YAMLError):
        yaml_load("!!python/object/apply:os.system ['echo hi']")


# ------------------------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    "key, meant",
    [
        ("widht", "width"),  # a typo
        ("dropout_rate", "dropout"),  # another system's name (polyscale.config.KNOWN_ALIASES)
        ("act_fn", "act"),
    ],
)
def test_an_unknown_key_suggests_the_key_it_likely_means(key: str, meant: str):
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, {"model": {"width": 1, key: 2}})
    assert str(err.value).endswith(f"; did you mean {meant!r}?") and f"model.{key}" in str(err.value)


def test_several_unknown_keys_each_get_their_suggestion_and_nonsense_gets_none():
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, {"modle": {}, "trian": {}})
    assert str(err.value).endswith("did you mean 'model' for 'modle', 'train' for 'trian'?")
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, {"model": {"width": 1, "qqqqqq": 2}})
    assert "did you mean" not in str(err.value)


def test_suggest_prefers_the_alias_table_and_only_names_allowed_keys():
    from polyscale.config import KNOWN_ALIASES, suggest

    assert suggest("learning_rate", ["lr", "learning_rates"]) == "lr"
    assert suggest("n_layers", ["num_layers", "hidden"]) == "num_layers"  # first target that is allowed
    assert suggest("n_layers", ["hidden"]) is None
    assert suggest("learning_rat", ["lr"]) == "lr"  # near an alias: the alias's target
    assert suggest("lrr", ["lr"], close=False) is None
    assert all(isinstance(v, tuple) and v for v in KNOWN_ALIASES.values())


def test_an_override_of_another_systems_name_says_ours():
    from polyscale.config import load_config

    with pytest.raises(
        ConfigError, match=r"unknown key train\.learning_rate in Train; .*did you mean 'lr'\?$"
    ):
        load_config(Experiment, {"model": {"width": 1}}, ["train.learning_rate=1e-3"])
