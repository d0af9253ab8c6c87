"""Strict configuration: dataclasses validated from YAML/dicts, plus ``section.key=value`` overrides.

One dataclass per component, its fields equal to the constructor's keyword arguments. ``from_dict`` refuses
unknown keys (naming the dotted key and the allowed ones) and values of the wrong type (naming the key, the
expected type and the value received). Presets and command-line overrides go through the same validation::

    cfg = load_config(ExperimentConfig, "digits2d.yaml", ["model.base_channels=64", "train.lr=1e-3"])

YAML is read with a ``yaml.SafeLoader`` subclass (never arbitrary objects) that differs from plain
``yaml.safe_load`` in two ways, both to avoid silent surprises:

- floats written without a dot (``1e-3``, ``2E+4``) are floats, as in YAML 1.2 and Python; PyYAML's YAML 1.1
  rules would read them as the *strings* ``"1e-3"``;
- a key repeated in one mapping is an error naming both lines (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "KNOWN_ALIASES",
    "UNBOUNDED",
    "shipped_presets",
    "ConfigError",
    "check_finite",
    "from_dict",
    "load_config",
    "load_yaml",
    "merge",
    "parse_overrides",
    "suggest",
    "to_dict",
    "yaml_load",
]


def shipped_presets(*folder: str) -> list[str]:
    """Names (file stems) of the YAML presets shipped in the package folder ``polyscale/presets/<folder...>``;
    ``[]`` when it does not exist."""
    from importlib import resources

    path = resources.files("polyscale").joinpath("presets", *folder)
    if not path.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in path.iterdir() if p.name.endswith(".yaml"))


class ConfigError(ValueError):
    """A configuration value or key that does not fit its dataclass (or a malformed YAML/override)."""


# Names other systems (nanoGPT, diffusers, k-diffusion, ADM, PyG) use for what we call otherwise, in config keys
# and flags (underscore spelling): name -> our names, the first one the config section or command has wins.
KNOWN_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "hidden_dim": ("hidden",),
    "hidden_channels": ("hidden",),
    "hidden_size": ("hidden", "n_embd"),
    "channel_mult": ("channel_mults",),
    "layers_per_block": ("num_res_blocks",),
    "model_channels": ("base_channels",),
    "attention_resolutions": ("attention_levels",),
    "n_embed": ("n_embd",),
    "n_layers": ("n_layer", "num_layers"),
    "num_heads": ("n_head",),
    "num_attention_heads": ("n_head",),
    "max_iters": ("max_steps",),
    "max_train_steps": ("max_steps",),
    "num_train_steps": ("max_steps",),
    "batch": ("batch_size",),
    "train_batch_size": ("batch_size",),
    "warmup_iters": ("warmup_steps",),
    "lr_warmup_steps": ("warmup_steps",),
    "ema_rate": ("ema_decay",),
    "max_grad_norm": ("grad_clip",),
    "dropout_rate": ("dropout",),
    "dataloader_num_workers": ("num_workers",),
    "log_interval": ("log_every",),
    "checkpointing_steps": ("checkpoint_every",),
    "num_inference_steps": ("timesteps", "steps"),
    "num_steps": ("timesteps", "steps"),
    "n_samples": ("num_samples",),
    "sample_size": ("resolution", "size"),
    "out_dir": ("output_dir",),
    "context_length": ("block_size",),
}


def suggest(name: str, allowed: Sequence[str], *, close: bool = True) -> str | None:
    """The name in ``allowed`` that ``name`` most likely means: its entry in :data:`KNOWN_ALIASES`, else (when
    ``close``) the nearest spelling (:func:`difflib.get_close_matches`) among ``allowed`` and the aliases of
    its names, an alias standing for its name; ``None`` when nothing fits."""
    aliases = {alias: _first_allowed(alias, allowed) for alias in KNOWN_ALIASES}
    if aliases.get(name.lower()) is not None:
        return aliases[name.lower()]
    if not close:
        return None
    spellings = {
        **{a: target for a, target in aliases.items() if target is not None},
        **{a: a for a in allowed},
    }
    matches = difflib.get_close_matches(name, list(spellings), n=1, cutoff=0.6)
    return spellings[matches[0]] if matches else None


def _first_allowed(alias: str, allowed: Sequence[str]) -> str | None:
    return next((name for name in KNOWN_ALIASES[alias] if name in allowed), None)


def _did_you_mean(unknown: Sequence[str], allowed: Sequence[str]) -> str:
    """``"; did you mean 'hidden'?"`` (one key) or ``"; did you mean 'hidden' for 'hidden_dim', ...?"``."""
    hints = [(key, suggest(key, allowed)) for key in unknown]
    found = [(key, match) for key, match in hints if match is not None]
    if not found:
        return ""
    if len(unknown) == 1:
        return f"; did you mean {found[0][1]!r}?"
    return "; did you mean " + ", ".join(f"{m!r} for {k!r}" for k, m in found) + "?"


# ----------------------------------------------------------------------------------------------- YAML loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 exponent floats and duplicate-key errors (see the module docstring)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # ``<<: *anchor`` merges may legitimately repeat keys
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first defined on line {first_line[key] + 1})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
            except TypeError:  # unhashable key: the base constructor reports it
                break
        return super().construct_mapping(node, deep=deep)


# Mantissa with at least one digit, optional dot, exponent with optional sign: 1e3, -2E+4, .5e-1, 1.e2.
# Forms with a dot and a signed exponent are already floats under PyYAML's own resolver, which runs first.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


class _StrictDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings :func:`yaml_load` would read as exponent floats (``"0E0"``, ``"1e3"``)."""


_StrictDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def yaml_dump(data: Any, **kwargs) -> str:
    """YAML text of plain ``data`` that :func:`yaml_load` reads back as the same values."""
    return yaml.dump(data, Dumper=_StrictDumper, **kwargs)


def yaml_load(text: str) -> Any:
    """Parse YAML ``text`` safely (plain data only), with exponent floats and duplicate-key errors.

    Raises:
        yaml.YAMLError: syntax errors and duplicate keys (with ``problem_mark`` giving the position).
    """
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


# ------------------------------------------------------------------------------------------ type validation


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _received(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    hint = " (write null for None)" if type(None) in args and value in ("None", "none") else ""
    if len(options) == 1 and value is not None and not hint:  # ``X | None``: X's own error is more precise
        return _convert(value, options[0], where)
    for option in options:
        try:
            return _convert(value, option, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {_type_name(tp)}, {_received(value)}{hint}")


def _convert_sequence(value: Any, tp: Any, origin: type, args: tuple[Any, ...], where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), {_received(value)}")
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if args == ((),):  # tuple[()]: the empty tuple
            args = ()
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items ({_type_name(tp)}), got {list(value)!r}")
        items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
    else:
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(value: Any, tp: type, where: str) -> Any:
    if tp is float:
        # ints are accepted for floats (YAML writes 1 for 1.0); bools are not numbers here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, {_received(value)}")
        if math.isnan(value):  # never a meaningful setting; infinities are checked by check_finite
            raise ConfigError(f"{where} must be a finite number, got nan")
        return float(value)
    if tp is int and isinstance(value, bool):  # bool is a subclass of int in Python, never in a config
        raise ConfigError(f"{where}: expected int, {_received(value)}")
    if issubclass(tp, PurePath) and isinstance(value, str):
        return tp(value)
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, {_received(value)}")
    return value


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert YAML forms (lists -> tuples, int -> float)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in (tuple, list, dict):  # bare annotations behave like their unparametrised generics
        origin, args = tp, ()
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        # compare type too: True == 1 and 1 == 1.0 in Python, but Literal[1] should not accept True or 1.0
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{where}: expected one of {list(args)}, {_received(value)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, {_received(value)}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list, Sequence):
        return _convert_sequence(value, tp, tuple if origin is tuple else list, args, where)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping ({_type_name(tp)}), {_received(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, f"{where} key {k!r}"): _convert(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(tp, type):
        return _convert_scalar(value, tp, where)
    raise TypeError(f"{where}: unsupported annotation {tp!r} in a config dataclass")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as err:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__name__} ({err}); config dataclasses must be defined "
            "at module level so their string annotations can be resolved"
        ) from None


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys and types recursively.

    Args:
        cls: a dataclass; its annotations say what each key accepts (int, float, bool, str, ``X | None``,
            ``Literal[...]``, ``tuple[int, ...]``, ``tuple[int, int]``, ``list[...]``, ``dict[str, ...]``,
            nested dataclasses). Lists are converted to tuples and ints to floats where annotated so.
        data: plain mapping (from YAML/JSON); missing optional keys take the dataclass defaults.
        where: dotted prefix of ``data`` inside a larger config, used in error messages.

    Raises:
        ConfigError: unknown key (message names the dotted key and the allowed keys), missing required field,
            a value of the wrong type (message names key, expected type and received value), or a
            ``ValueError`` from the dataclass's own ``__post_init__`` (re-raised with the dotted location).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        where = where or cls.__name__
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, {_received(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        keys = ", ".join(f"{prefix}{k}" for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        hint = _did_you_mean([str(k) for k in unknown], sorted(fields))
        raise ConfigError(
            f"unknown key{plural} {keys} in {cls.__name__}; allowed keys: {sorted(fields)}{hint}"
        )
    kwargs = {name: _convert(data[name], hints[name], f"{prefix}{name}") for name in fields if name in data}
    missing = [
        f"{prefix}{n}"
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key(s) {missing} of {cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


# field metadata key: the field may be +inf, which means "no limit" (e.g. ``train.grad_clip``)
UNBOUNDED = "unbounded"


def check_finite(obj: Any, where: str = "") -> None:
    """Refuse NaN and infinite numbers in the config dataclass ``obj`` (nested dataclasses, lists and tuples
    included): a ConfigError names the dotted key, ``train.lr must be a finite number, got inf``. A field whose
    metadata sets :data:`UNBOUNDED` may be ``+inf`` (its "no limit"); free-form mappings (a sampler's
    options, where ``s_tmax: .inf`` means no limit) are checked for NaN only. ``where`` prefixes the keys."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"check_finite expects a dataclass instance, got {obj!r}")
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        _check_finite_value(getattr(obj, f.name), key, allow_inf=bool(f.metadata.get(UNBOUNDED)))


def _check_finite_value(value: Any, key: str, *, allow_inf: bool = False, nan_only: bool = False) -> None:
    if isinstance(value, float):
        if math.isnan(value) or (math.isinf(value) and not nan_only and not (allow_inf and value > 0)):
            limit = " (or .inf for no limit)" if allow_inf else ""
            raise ConfigError(f"{key} must be a finite number{limit}, got {value}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        check_finite(value, key)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite_value(item, f"{key}[{i}]", allow_inf=allow_inf, nan_only=nan_only)
    elif isinstance(value, Mapping):
        for name, item in value.items():
            _check_finite_value(item, f"{key}.{name}", nan_only=True)


def to_dict(obj: Any) -> Any:
    """A JSON/YAML-safe copy of a dataclass: nested dataclasses become dicts, tuples lists, paths strings.

    ``from_dict(type(obj), to_dict(obj)) == obj`` for every config that ``from_dict`` can build.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------ overrides and loading


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["model.base_channels=64", "train.lr=1e-3", "model.channel_mults=[1,2,2]"]`` -> nested dict.

    Values are parsed as YAML (numbers, bools, ``null``, lists, mappings; anything else stays a string).
    Repeating a key keeps the last value; setting both ``a=...`` and ``a.b=...`` is an error.
    """
    if isinstance(items, str):
        raise ConfigError(f"overrides must be a list of 'section.key=value' strings, got a string {items!r}")
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise ConfigError(
                f"override {item!r} is not of the form section.key=value (e.g. model.base_channels=64)"
            )
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            reason = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({reason})") from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r} sets a key inside {'.'.join(parts[: depth + 1])!r}, "
                    "which an earlier override set to a plain value"
                )
        previous = node.get(parts[-1])
        if isinstance(previous, dict):
            if not isinstance(value, dict):
                earlier = f"{key.strip()}.*"
                raise ConfigError(f"override {item!r} replaces keys set by earlier overrides of {earlier}")
            value = merge(previous, value)
        node[parts[-1]] = value
    return result


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge into a new dict: mappings merge key by key, other values in ``update`` replace ``base``'s.

    Neither input is modified and the result shares no mutable values with them.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` safely (see :func:`yaml_load`); an empty file is ``{}``.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ConfigError: invalid YAML (message names file and line), duplicate key, or a non-mapping top level.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} is not a file")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or a mapping), apply dot-overrides, validate with :func:`from_dict`.

    Raises:
        FileNotFoundError: the YAML file is missing.
        ConfigError: bad YAML, malformed override, or validation failure (prefixed with the file name).
    """
    data = dict(source) if isinstance(source, Mapping) else load_yaml(source)
    merged = merge(data, parse_overrides(overrides))
    if isinstance(source, Mapping):
        return from_dict(cls, merged)
    try:
        return from_dict(cls, merged)
    except ConfigError as err:
        origin = f"{source}" + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(f"{origin}: {err}") from None
