"""Model directories and atomic writes.

A saved model is a directory::

    config.json         {"format": "polyscale-model", "format_version": 1, "class": "UNet",
                         "config": {...constructor keyword arguments...}, "metadata": {...}}
    model.safetensors   the network's state dict
    ema.safetensors     (optional) the EMA weights, same keys and shapes

**Model protocol.** A saveable model class has a class attribute ``config_class`` (a dataclass whose init
fields are exactly the constructor's keyword arguments) and an instance attribute ``config`` (an instance of
it). Loading rebuilds the model as ``cls(**fields(from_dict(cls.config_class, config)))``, then loads the
weights into it.

**Safety.** Weights are read with safetensors only; nothing is ever unpickled. Pickle checkpoints (``.pt``,
``.pth``, ``.bin``, ``.ckpt``, ``.pkl``, or files starting with a pickle/torch-zip signature) are refused with
a message saying how to convert them once, in a trusted environment.

**Atomicity.** Files are written to a temporary name in the same folder, fsynced, then renamed. A model
directory is built in a hidden sibling ``.<name>.tmp-<hex>``, fsynced, and renamed into place; an existing
directory is first renamed aside to ``.<name>.old-<hex>`` and deleted only once the new one is in place. A
process killed mid-save therefore leaves at the target path either the previous complete model or (killed
between the two renames) nothing, never a half-written one; the hidden siblings it leaves behind are
complete-or-partial copies that can be deleted (or, for ``.old-``, renamed back).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyscale.config import ConfigError, from_dict, to_dict

FORMAT = "polyscale-model"
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# ---------------------------------------------------------------------------------------------- atomic writes


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path``: temporary file in the same folder, fsync, then ``os.replace``.

    Readers see the old content or the new one, never a partial file. The new file gets the usual
    permissions (``0o666`` minus the umask). Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_run_dir(directory: str | Path, command: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config.json, model.safetensors)`` of a run directory that ``polyscale <command>`` wrote."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}; expected a `polyscale {command}` run directory"
            )
    return json.loads((directory / "config.json").read_text()), load_file(directory / "model.safetensors")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Text (UTF-8) version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):  # files before their folders
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


def atomic_replace_dir(build: Callable[[Path], None], target: str | Path) -> Path:
    """Create directory ``target`` atomically from ``build(tmp_dir)``, replacing any existing directory.

    ``build`` fills a hidden sibling temporary directory, which is fsynced and renamed into place. An existing
    ``target`` is renamed aside first and deleted only after the new one is in place; if anything raises,
    the temporary directory is removed and the previous ``target`` restored. See the module docstring for what
    a killed process leaves behind.

    Raises:
        NotADirectoryError: ``target`` exists and is not a directory.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    tmp.mkdir()
    old: Path | None = None
    try:
        build(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = _temp_sibling(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous version back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


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
            non-JSON metadata, EMA weights whose keys/shapes differ from the model's, or a target directory
            that holds something other than a polyscale model.
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
    _check_replaceable(target)

    def build(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if ema_weights is not None:
            save_file(ema_weights, str(tmp / EMA_NAME), metadata={"format": "pt"})

    return atomic_replace_dir(build, target)


# ---------------------------------------------------------------------------------------------------- loading


def _pickle_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} looks like a pickle checkpoint; polyscale refuses to unpickle files for safety (unpickling "
        "can run arbitrary code). Convert it once, in an environment you trust: "
        f"safetensors.torch.save_file(torch.load({str(path)!r}, weights_only=True), 'model.safetensors'), "
        "then rebuild the model and save it with polyscale.io.save_pretrained"
    )


def _has_pickle_signature(path: Path) -> bool:
    """Pickle protocol 2-5 header (``\\x80`` + version; also torch's legacy format) or a torch zip archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":  # zip: torch.save's container holds <archive>/data.pkl (numpy .npz does not)
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _is_pickle_file(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES or _has_pickle_signature(path)


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
        if path.suffix.lower() != ".safetensors" and _is_pickle_file(path):
            raise _pickle_error(path)
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
        pickles = sorted(p for p in path.iterdir() if p.is_file() and _is_pickle_file(p))
        if pickles:
            raise _pickle_error(pickles[0])
        found = sorted(p.name for p in path.iterdir())[:8]
        raise FileNotFoundError(
            f"{path} has no {CONFIG_NAME}; expected a model directory saved by save_pretrained, found {found}"
        )
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); expected a polyscale model config") from None
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
        raise _pickle_error(path)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if _has_pickle_signature(path):
            raise _pickle_error(path) from None
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from None


def _check_fits(
    model: nn.Module, state: Mapping[str, torch.Tensor], info: ModelDir, weights: Path, strict: bool
):
    expected = model.state_dict()
    shapes = [f"{k}: config builds {tuple(v.shape)}, file has {tuple(state[k].shape)}"
              for k, v in expected.items() if k in state and v.shape != state[k].shape]  # fmt: skip
    problems = [f"shape mismatch {shapes[:5]}"] if shapes else []
    if strict:
        missing, extra = [k for k in expected if k not in state], [k for k in state if k not in expected]
        problems += [f"missing keys {missing[:5]}"] if missing else []
        problems += [f"unexpected keys {extra[:5]}"] if extra else []
    if problems:
        where = f"the {info.class_name} described by {info.config_path}"
        raise ValueError(f"{weights} does not fit {where}: {'; '.join(problems)}")


def load_pretrained(
    directory: str | Path,
    classes: Mapping[str, type],
    *,
    ema: bool = False,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Rebuild the model saved in ``directory`` and load its weights (bit-identical to what was saved).

    Args:
        directory: a model directory written by :func:`save_pretrained`.
        classes: explicit registry ``{class name in config.json: model class}``; each class follows the model
            protocol (``config_class`` + ``config``). Nothing is resolved from strings beyond this mapping.
        ema: load ``ema.safetensors`` instead of ``model.safetensors``.
        map_location: device for the model and its weights.
        strict: require the file's keys to equal the model's (shapes must always match).

    Returns:
        The model (in training mode, as constructed; call ``.eval()`` to sample). Parameters keep the dtype
        the constructor gives them; weights saved in another dtype are converted on load.

    Raises:
        ValueError: unknown class (lists the known ones), class without ``config_class``, weights that do
            not fit the config, or any error of :func:`read_model_dir` / :func:`load_weights`.
        ConfigError: config.json's ``config`` does not validate against ``config_class``.
        FileNotFoundError: missing directory, config.json or weights file.
    """
    info = read_model_dir(directory)
    if info.class_name not in classes:
        raise ValueError(
            f"{info.config_path}: unknown model class {info.class_name!r}; known: {sorted(classes)}"
        )
    cls = classes[info.class_name]
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise ValueError(
            f"{cls.__name__} has no `config_class` dataclass attribute (found {config_class!r}); "
            "model classes expose config_class (constructor arguments) and config (its instance)"
        )
    try:
        config = from_dict(config_class, info.config, where="config")
    except ConfigError as err:
        raise ConfigError(f"{info.config_path}: {err}") from None
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    try:
        model = cls(**kwargs).to(map_location)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{info.config_path}: could not build {cls.__name__} from its config: {err}"
        ) from err
    weights = info.ema_path if ema else info.model_path
    if not weights.is_file():
        hint = "; it was saved without EMA weights, load with ema=False" if ema else ""
        raise FileNotFoundError(f"{info.path} has no {weights.name}{hint}")
    state = load_weights(weights, map_location=map_location)
    _check_fits(model, state, info, weights, strict)
    model.load_state_dict(state, strict=strict)
    return model
