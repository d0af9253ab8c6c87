"""Model directories: one save/load protocol for every polyscale model.

A saved model is a directory::

    config.json         {"format": "polyscale-model", "format_version": 1, "class": "UNet",
                         "config": {...constructor keyword arguments...}, "metadata": {...}}
    model.safetensors   the network's state dict
    ema.safetensors     (optional) the EMA weights, same keys and shapes

**Model protocol.** A saveable model class has a class attribute ``config_class`` (a dataclass whose init
fields are exactly the constructor's keyword arguments) and an instance attribute ``config`` (an instance of
it). Loading rebuilds the model as ``cls(**fields(from_dict(cls.config_class, config)))``, then loads the
weights into it. A class whose structure lives in its weights (``SparseMLP``: connection positions of
variable size) defines ``cls.build_for_weights(config, state) -> model`` instead, which builds a model whose
parameters have the shapes of ``state``. :class:`PretrainedMixin` gives a model class
``model.save_pretrained(dir)`` and ``Class.from_pretrained(dir)`` on top of this.

**Safety.** Weights are read with safetensors only; nothing is ever unpickled. Pickle checkpoints (``.pt``,
``.pth``, ``.bin``, ``.ckpt``, ``.pkl``, or files starting with a pickle/torch-zip signature) are refused with
a message saying how to convert them once, in a trusted environment.

**Atomicity.** A model directory is written with :func:`polyscale.atomic.atomic_replace_dir`: a process
killed mid-save leaves the previous complete model or nothing, never a half-written one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyscale.atomic import atomic_replace_dir
from polyscale.config import ConfigError, from_dict, to_dict
from polyscale.pickles import PICKLE_SUFFIXES, has_pickle_signature, is_pickle_file, pickle_error

__all__ = ["PretrainedMixin", "first_non_finite", "load_pretrained", "load_weights", "model_from_state",
           "read_model_dir", "resolve_model_dir", "save_pretrained"]  # fmt: skip

FORMAT = "polyscale-model"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, str] | None:
    """``(name, "nan (3 of 120 values)")`` for the first floating-point tensor of ``named`` holding NaN or
    +-inf, or None when all are finite. One device synchronisation for the whole check (more only to
    describe a tensor that is not finite)."""
    items = [(n, t.detach()) for n, t in named if t.is_floating_point() or t.is_complex()]
    if not items:
        return None
    device = items[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in items])
    bad = (~finite).nonzero()
    if bad.numel() == 0:
        return None
    name, tensor = items[int(bad[0, 0])]
    count = int((~torch.isfinite(tensor)).sum())
    value = "nan" if bool(tensor.isnan().any()) else ("inf" if bool(tensor.isposinf().any()) else "-inf")
    return name, f"{value} ({count} of {tensor.numel()} values)"


def _parameter_names(model: nn.Module) -> set[str]:
    """State-dict keys of ``model`` that are parameters (tied ones under each of their names), not buffers."""
    return {name for name, _ in model.named_parameters(remove_duplicate=False)}


# ----------------------------------------------------------------------------------------------------- saving


def _tensors_for_saving(obj: nn.Module | Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """CPU tensors safetensors accepts: contiguous, each owning its whole storage (tied ones copied)."""
    state = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{what} entry {key!r} is a {type(value).__name__}; only tensors can be saved")
        t = value.detach().to("cpu")
        storage = t.untyped_storage()
        # safetensors refuses tensors that share memory (tied weights) or are views: store independent copies
        shared = storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size()
        seen.add(storage.data_ptr())
        out[key] = t.clone(memory_format=torch.contiguous_format) if shared or not t.is_contiguous() else t
    return out


def _check_same_layout(model: Mapping[str, torch.Tensor], ema: Mapping[str, torch.Tensor]) -> None:
    missing, extra = sorted(set(model) - set(ema)), sorted(set(ema) - set(model))
    shapes = [f"{k}: {tuple(model[k].shape)} vs {tuple(ema[k].shape)}" for k in model if k in ema and
              model[k].shape != ema[k].shape]  # fmt: skip
    if missing or extra or shapes:
        raise ValueError(
            "ema weights must have the model's keys and shapes (load_pretrained(ema=True) rebuilds the model "
            f"from them); missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {shapes[:5]}"
        )


def _check_config(model: nn.Module) -> Any:
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(
            f"{name} has no `config` attribute holding a dataclass instance (got {type(config).__name__}); "
            "save_pretrained needs one whose fields are the constructor's keyword arguments"
        )
    config_class = getattr(type(model), "config_class", None)
    if config_class is not None and not isinstance(config, config_class):
        raise ValueError(
            f"{name}.config is a {type(config).__name__}, expected {name}.config_class ({config_class})"
        )
    try:
        from_dict(type(config), to_dict(config))
    except (ConfigError, TypeError) as err:
        raise ValueError(f"{name}.config would not load back: {err}") from None
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    try:
        inspect.signature(type(model)).bind(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"{name}'s constructor does not accept the fields of {type(config).__name__} as keyword "
            f"arguments ({err}); the config must equal the constructor's keyword arguments"
        ) from None
    return config


def _check_replaceable(target: Path) -> None:
    """Only an empty folder or a polyscale model directory may be replaced (never a user's other files)."""
    if not target.is_dir():
        return
    contents = sorted(p.name for p in target.iterdir())
    foreign = [n for n in contents if n not in (CONFIG_NAME, WEIGHTS_NAME, EMA_NAME)]
    if contents and (foreign or CONFIG_NAME not in contents):
        raise ValueError(
            f"{target} exists and is not a polyscale model directory (it holds {contents[:8]}); saving would "
            "delete it. Choose a new directory or remove it first"
        )


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    ema: nn.Module | Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (and optionally EMA weights) as a model directory, atomically.

    Args:
        model: follows the model protocol (module docstring): ``model.config`` is a dataclass instance whose
            fields are the constructor's keyword arguments.
        directory: target folder; an existing model directory there is replaced, anything else is refused.
        ema: EMA weights (a module of the same architecture or its state dict) for ``ema.safetensors``.
        metadata: JSON-serialisable extras stored in config.json (e.g. training configuration, data shape).

    Returns:
        The directory path.

    Raises:
        ValueError: no dataclass config, a config that does not match the constructor or would not load back,
            non-JSON metadata, EMA weights whose keys/shapes differ from the model's, a parameter (of the
            model or the EMA) holding NaN or inf, or a target directory that holds something other than a
            polyscale model.
    """
    config = _check_config(model)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": type(model).__name__,
        "config": to_dict(config),
        "metadata": to_dict(dict(metadata or {})),
    }
    try:
        text = json.dumps(header, indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"config and metadata must be JSON-serialisable: {err}") from None
    weights = _tensors_for_saving(model, "model state_dict")
    ema_weights = None if ema is None else _tensors_for_saving(ema, "ema state_dict")
    if ema_weights is not None:
        _check_same_layout(weights, ema_weights)
    target = Path(directory)
    params = _parameter_names(model)
    for what, tensors in (("model", weights), ("EMA", ema_weights or {})):
        found = first_non_finite((k, v) for k, v in tensors.items() if k in params)
        if found is not None:
            raise ValueError(
                f"refusing to save non-finite weights to {target}: {what} parameter {found[0]!r} holds "
                f"{found[1]}; the training diverged (lower the learning rate)"
            )
    _check_replaceable(target)

    def build(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if ema_weights is not None:
            save_file(ema_weights, str(tmp / EMA_NAME), metadata={"format": "pt"})

    return atomic_replace_dir(build, target)


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class ModelDir:
    """What a model directory's ``config.json`` says, read without loading weights."""

    path: Path  # the model directory
    class_name: str  # config.json "class": key into the ``classes`` mapping of load_pretrained
    config: dict[str, Any]  # constructor keyword arguments (plain JSON, not yet validated)
    metadata: dict[str, Any]  # free-form extras given to save_pretrained
    format_version: int = FORMAT_VERSION  # config.json "format_version"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def model_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def ema_path(self) -> Path:
        return self.path / EMA_NAME

    @property
    def has_ema(self) -> bool:
        return self.ema_path.is_file()


def _missing_dir_error(path: Path) -> FileNotFoundError:
    leftovers = (
        sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    )
    hint = (
        f"; {leftovers[0]} next to it is the previous version from an interrupted save" if leftovers else ""
    )
    return FileNotFoundError(f"model directory {str(path)!r} does not exist{hint}")


def read_model_dir(directory: str | Path) -> ModelDir:
    """Read and check ``config.json`` of a model directory (no weights are loaded).

    Raises:
        FileNotFoundError: the directory or its config.json is missing.
        ValueError: a file instead of a directory, a pickle checkpoint, config.json that is not valid JSON,
            has the wrong ``format``/``format_version``, or lacks ``class``/``config``.
    """
    path = Path(directory)
    if not path.exists():
        raise _missing_dir_error(path)
    if not path.is_dir():
        if path.suffix.lower() != ".safetensors" and is_pickle_file(path):
            raise pickle_error(path)
        parent = (
            f" (did you mean its folder {str(path.parent)!r}?)"
            if path.name in (CONFIG_NAME, WEIGHTS_NAME)
            else ""
        )
        raise ValueError(
            f"{path} is a file; expected a model directory with {CONFIG_NAME} and {WEIGHTS_NAME}{parent}"
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        pickles = sorted(p for p in path.iterdir() if p.is_file() and is_pickle_file(p))
        if pickles:
            raise pickle_error(pickles[0])
        names = sorted(p.name for p in path.iterdir())[:8]
        raise FileNotFoundError(
            f"{path} has no {CONFIG_NAME}; expected a model directory saved by save_pretrained, found {names}"
        )
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); expected a polyscale model config") from None
    except OSError as err:
        raise ValueError(f"{cfg_path} could not be read ({err.strerror or err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else f"a JSON {type(header).__name__}"
        raise ValueError(f'{cfg_path}: expected "format": {FORMAT!r}, found {found!r}')
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: format_version {version!r} is not supported; expected {FORMAT_VERSION}"
        )
    for key, kind in (("class", str), ("config", dict), ("metadata", dict)):
        if key in header and not isinstance(header[key], kind):
            raise ValueError(f"{cfg_path}: {key!r} must be a JSON {kind.__name__}, found {header[key]!r}")
        if key not in header and key != "metadata":
            raise ValueError(f"{cfg_path}: missing key {key!r}")
    return ModelDir(path, header["class"], header["config"], header.get("metadata", {}), version)


def load_weights(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file as ``{name: tensor}`` on ``map_location``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a pickle checkpoint (refused), or a corrupt/truncated file (message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_error(path)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if has_pickle_signature(path):
            raise pickle_error(path) from None
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from None


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "floating point" if dtype.is_floating_point else "integer"


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, strict: bool) -> None:
    expected = model.state_dict()
    shapes = [f"{k}: config builds {tuple(v.shape)}, file has {tuple(state[k].shape)}"
              for k, v in expected.items() if k in state and v.shape != state[k].shape]  # fmt: skip
    # another precision of the same kind is converted on loading; another kind (int for float) is an error
    kinds = [
        f"{k}: the model expects {_dtype_kind(v.dtype)} ({v.dtype}), the file holds {state[k].dtype}"
        for k, v in expected.items()
        if k in state and _dtype_kind(v.dtype) != _dtype_kind(state[k].dtype)
    ]
    problems = [f"shape mismatch {shapes[:5]}"] if shapes else []
    problems += [f"dtype mismatch {kinds[:5]}"] if kinds else []
    if strict:
        missing, extra = [k for k in expected if k not in state], [k for k in state if k not in expected]
        problems += [f"missing keys {missing[:5]}"] if missing else []
        problems += [f"unexpected keys {extra[:5]}"] if extra else []
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")


def load_pretrained(
    directory: str | Path,
    classes: Mapping[str, type],
    *,
    ema: bool = False,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Rebuild the model saved in ``directory`` and load its weights (bit-identical to what was saved). The
    model is in training mode; weights saved in another floating-point precision are converted to the
    constructor's.

    Args:
        directory: a model directory written by :func:`save_pretrained`.
        classes: explicit registry ``{class name in config.json: model class}``; each class follows the model
            protocol (``config_class`` + ``config``). Nothing is resolved from strings beyond this mapping.
        ema: load ``ema.safetensors`` instead of ``model.safetensors``.
        map_location: device for the model and its weights.
        strict: require the file's keys to equal the model's (shapes must always match).

    Raises:
        ValueError: unknown class, class without ``config_class``, weights that do not fit the config
            (shape, or a dtype of another kind: integers where the model has floats), parameters holding NaN
            or inf (a diverged run), or any error of :func:`read_model_dir` / :func:`load_weights`;
            ConfigError: an invalid ``config``;
            FileNotFoundError: missing directory, config.json or weights file.
    """
    info = read_model_dir(directory)
    if info.class_name not in classes:
        raise ValueError(
            f"{info.config_path}: unknown model class {info.class_name!r}; known: {sorted(classes)}"
        )
    weights = info.ema_path if ema else info.model_path
    if not weights.is_file():
        hint = "; it was saved without EMA weights, load with ema=False" if ema else ""
        raise FileNotFoundError(f"{info.path} has no {weights.name}{hint}")
    state = load_weights(weights, map_location=map_location)
    cls = classes[info.class_name]
    return model_from_state(
        cls, info.config, state, strict=strict, source=str(info.config_path), weights=weights
    )


ModelT = TypeVar("ModelT", bound=nn.Module)


def model_from_state(
    cls: type[ModelT],
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "config",
    weights: str | Path = "state",
) -> ModelT:
    """``cls`` rebuilt from ``config`` (plain JSON, as in config.json) holding ``state`` (on its device): the
    in-memory protocol (module docstring) that :func:`load_pretrained` applies to a directory's files.
    ``source``/``weights`` name the two in error messages."""
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise ValueError(
            f"{cls.__name__} has no `config_class` dataclass attribute (found {config_class!r}); "
            "model classes expose config_class (constructor arguments) and config (its instance)"
        )
    try:
        cfg = from_dict(config_class, config, where="config")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}
    builder = getattr(cls, "build_for_weights", None)
    try:
        model = builder(cfg, state) if builder is not None else cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: could not build {cls.__name__} from its config: {err}") from err
    model = model.to(next(iter(state.values())).device if state else "cpu")
    _check_fits(model, state, f"{weights} does not fit the {cls.__name__} described by {source}", strict)
    params = _parameter_names(model)
    found = first_non_finite((k, v) for k, v in state.items() if k in params)
    if found is not None:
        raise ValueError(
            f"{weights} holds non-finite values in {found[0]}: {found[1]}; it was saved from a diverged run "
            "(retrain with a lower learning rate, or use an earlier checkpoint)"
        )
    model.load_state_dict(state, strict=strict)
    return model


# ------------------------------------------------------------------------------------- resolving and mixin

PRETRAINED_ROOT = Path(__file__).resolve().parent / "pretrained"  # shipped models, one directory each


def resolve_model_dir(name_or_path: str | Path, *, kind: str | None = None) -> Path:
    """The model directory meant by ``name_or_path``: a model directory itself, a run directory (its
    ``model/``), or the name of a shipped model (``polyscale/pretrained/<name>``), tried in that order.

    ``kind`` (a class name such as ``"UNet"``) additionally requires the model to be of that class.

    Raises:
        FileNotFoundError: none of the three forms exists (the message lists the shipped names).
        ValueError: the model is of another class than ``kind``, or any error of :func:`read_model_dir`.
    """
    path = Path(name_or_path)
    if (path / CONFIG_NAME).is_file() or (path.exists() and not (path / "model").is_dir()):
        found = path
    elif (path / "model" / CONFIG_NAME).is_file():
        found = path / "model"
    elif path.parent == Path(".") and (PRETRAINED_ROOT / path.name / CONFIG_NAME).is_file():
        found = PRETRAINED_ROOT / path.name
    else:
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a model directory, a run directory with model/, or a shipped model "
            f"(shipped: {sorted(p.parent.name for p in PRETRAINED_ROOT.glob('*/' + CONFIG_NAME))})"
        )
    info = read_model_dir(found)
    if kind is not None and info.class_name != kind:
        raise ValueError(f"{found} holds a {info.class_name}, expected a {kind}")
    return found


class PretrainedMixin:
    """``model.save_pretrained(directory)`` and ``Class.from_pretrained(name_or_path)`` for a model class that
    follows the model protocol (module docstring): ``config.json`` + ``model.safetensors`` (+ EMA weights).

    Not ``huggingface_hub.PyTorchModelHubMixin``: it downloads any name that is not a local folder (we never
    download at run time), its config.json lacks our format header (shipped models would not load unchanged)
    and it has no place for EMA weights or for structure stored in the weights (``SparseMLP``).
    """

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        ema: nn.Module | Mapping[str, torch.Tensor] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write this model (and optionally EMA weights) to ``directory`` atomically; see
        :func:`save_pretrained`."""
        if not isinstance(self, nn.Module):
            raise TypeError(f"PretrainedMixin is for nn.Module classes; {type(self).__name__} is not one")
        return save_pretrained(self, directory, ema=ema, metadata=metadata)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        ema: bool = False,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
    ):
        """The model saved at ``name_or_path`` (model directory, run directory or shipped model name; see
        :func:`resolve_model_dir`), bit-identical to what was saved. ``ema=True`` loads the EMA weights.

        Raises:
            ValueError: the directory holds another class than ``cls`` (or any error of
                :func:`load_pretrained`).
        """
        directory = resolve_model_dir(name_or_path, kind=cls.__name__)
        return load_pretrained(
            directory, {cls.__name__: cls}, ema=ema, map_location=map_location, strict=strict
        )
