"""CLIP's text tower as a prompt encoder: prompts in, a context sequence for cross-attention out (optional
extra ``pip install polyscale[clip]``).

:class:`CLIPTextEncoder` loads a CLIP text model and its tokenizer from a **local directory** through
``transformers`` (nothing downloads; weights are read from safetensors only, a pickle checkpoint is refused) and
keeps it frozen: evaluation mode whatever its parent's mode, no trainable parameters. ``encode(prompts)``
returns the model's last hidden state, one vector per token, and the tokenizer's attention mask:

- ``context``: ``(B, L, D)`` float32, ``D`` = the model's hidden size (``context_dim``);
- ``context_mask``: ``(B, L)`` bool, True for a real token (the start and end tokens included), False for
  padding. Every prompt is padded to ``L = max_length`` tokens, so contexts of different batches stack; a
  longer prompt is cut to ``L`` tokens with a warning. Padded positions hold what the model computes there
  (as Stable Diffusion uses them); a consumer that respects the mask ignores them.

``to_metadata()`` records which encoder made the contexts (``{"kind": "clip", "path", "context_dim",
"max_length"}``) so a model trained on them can name it, and :meth:`CLIPTextEncoder.from_metadata` loads it
again. The directory is what ``save_pretrained`` writes for a ``CLIPTextModel`` (or
``CLIPTextModelWithProjection``, or a whole ``CLIPModel``, whose text tower is used) and its tokenizer:
``config.json``, ``model.safetensors`` (or a sharded ``model.safetensors.index.json``), and ``tokenizer.json``
or ``vocab.json`` + ``merges.txt``.

``import polyscale.nn.clip_text`` does not import ``transformers``; loading an encoder does.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polyscale.pickles import PICKLE_SUFFIXES

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of shards
# model_type in config.json -> what it is; a whole CLIP model's text tower loads as a CLIPTextModel
CLIP_MODEL_TYPES = {"clip_text_model": "a CLIP text model", "clip": "a CLIP model (its text tower is used)"}
METADATA_KEYS = ("kind", "path", "context_dim", "max_length")


def _transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "CLIPTextEncoder needs the transformers package, which is not installed; "
            "install it with: pip install 'polyscale[clip]'"
        ) from err
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bar and no load report while loading: the checks here say what matters (a whole CLIP
    model's vision weights are unused by design, missing text weights are an error)."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())[:10]


def _read_config(path: Path) -> dict[str, Any]:
    """Check that ``path`` is a directory holding a CLIP text model with safetensors weights and its
    tokenizer; return its config.json. Each failure is one line naming what was expected and what was found."""
    if not path.exists():
        raise FileNotFoundError(
            f"CLIP directory {str(path)!r} does not exist; expected a local directory with config.json, "
            "model.safetensors and the tokenizer files"
        )
    if not path.is_dir():
        hint = (
            f" (did you mean its folder {str(path.parent)!r}?)"
            if path.suffix in (".json", ".safetensors")
            else ""
        )
        raise ValueError(
            f"{path} is a file; expected a directory with config.json, model.safetensors and the tokenizer "
            f"files{hint}"
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        hint = ""
        if (path / "text_encoder").is_dir():
            hint = " (a diffusers pipeline: save its text_encoder/ and tokenizer/ into one directory)"
        raise FileNotFoundError(
            f"{path} has no {CONFIG_NAME}; expected a CLIP text model saved with save_pretrained, "
            f"found {_names(path)}{hint}"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); expected a CLIP text model config") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in CLIP_MODEL_TYPES:
        found = (
            f"model_type {model_type!r} (architectures {config.get('architectures')})"
            if isinstance(config, dict)
            else f"a JSON {type(config).__name__}"
        )
        raise ValueError(
            f"{cfg_path}: expected a CLIP text model (model_type 'clip_text_model' or 'clip'), found {found}"
        )
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        pickles = sorted(
            p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
        )
        if pickles:
            raise ValueError(
                f"{path} holds its weights only as a pickle ({pickles[0]}), which polyscale refuses to load "
                "(unpickling can run arbitrary code); convert it to safetensors once, where you trust the file: "
                "CLIPTextModel.from_pretrained(dir).save_pretrained(dir) writes model.safetensors"
            )
        raise FileNotFoundError(
            f"{path} has no weights; expected model.safetensors (or model.safetensors.index.json), "
            f"found {_names(path)}"
        )
    has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not ((path / "tokenizer.json").is_file() or has_bpe):
        raise FileNotFoundError(
            f"{path} has no tokenizer files; expected tokenizer.json or vocab.json + merges.txt "
            f"(tokenizer.save_pretrained(dir) writes them), found {_names(path)}"
        )
    return config


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, (str, bytes)):
        raise TypeError(
            f"prompts must be a sequence of str, got a single {type(prompts).__name__} {prompts[:40]!r}; "
            "wrap it in a list"
        )
    try:
        batch = list(prompts)
    except TypeError:
        raise TypeError(f"prompts must be a sequence of str, got a {type(prompts).__name__}") from None
    if not batch:
        raise ValueError("prompts must hold at least one prompt, got an empty sequence")
    for i, prompt in enumerate(batch):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} must be a str, got a {type(prompt).__name__} ({prompt!r:.40})")
    return batch


class CLIPTextEncoder(nn.Module):
    """A frozen CLIP text model and its tokenizer, following :class:`polyscale.nn.text.PromptEncoder`.

    Build it with :meth:`from_directory` or :meth:`from_metadata`; the constructor takes an already loaded
    ``transformers`` model and tokenizer.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, path: str | Path, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.path = Path(path).resolve()
        self.max_length = int(max_length)
        config: Any = model.config  # a transformers CLIPTextConfig
        self.context_dim = int(config.hidden_size)
        self.model.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_directory(
        cls, path: str | Path, *, device: str | torch.device = "cpu", max_length: int | None = None
    ) -> CLIPTextEncoder:
        """Load the CLIP text model and tokenizer saved in the local directory ``path``.

        ``max_length`` (tokens per prompt, ``L``; the start and end tokens included) defaults to the smaller of
        the tokenizer's ``model_max_length`` and the model's ``max_position_embeddings`` (77 for OpenAI's CLIP).

        Raises:
            FileNotFoundError: the directory, its config.json, its safetensors weights or its tokenizer files are
                missing.
            ValueError: a file instead of a directory, a config that is not a CLIP text model, weights only as a
                pickle, weights that do not fill the model, or a ``max_length`` the model cannot take.
            ImportError: transformers is not installed.
        """
        path = Path(path).expanduser().resolve()
        config = _read_config(path)
        transformers = _transformers()
        with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or [])
        model_class = (
            transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
        )
        with _quiet(transformers):
            model, info = model_class.from_pretrained(
                path, local_files_only=True, use_safetensors=True, output_loading_info=True
            )
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"{path}: the weights do not fill a {model_class.__name__}; missing {len(missing)} tensors "
                f"such as {missing[:3]}"
            )
        tokenizer = transformers.CLIPTokenizerFast.from_pretrained(path, local_files_only=True)
        positions = int(model.config.max_position_embeddings)
        if max_length is None:
            max_length = min(int(tokenizer.model_max_length), positions)
        elif (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not 2 <= max_length <= positions
        ):
            raise ValueError(
                f"max_length must be an int from 2 (start and end tokens) to the model's {positions} positions, "
                f"got {max_length!r}"
            )
        model = model.to(device=device, dtype=torch.float32)
        return cls(model, tokenizer, path=path, max_length=max_length)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, device: str | torch.device = "cpu") -> CLIPTextEncoder:
        """Load the encoder that :meth:`to_metadata` described, and check it still makes contexts as wide."""
        if not isinstance(meta, Mapping) or meta.get("kind") != "clip":
            found = meta.get("kind") if isinstance(meta, Mapping) else f"a {type(meta).__name__}"
            raise ValueError(f'expected text encoder metadata with "kind": "clip", found kind {found!r}')
        missing = [key for key in METADATA_KEYS if key not in meta]
        if missing:
            raise ValueError(
                f"CLIP encoder metadata lacks {missing}; expected the keys {list(METADATA_KEYS)}"
            )
        encoder = cls.from_directory(meta["path"], device=device, max_length=meta["max_length"])
        if encoder.context_dim != meta["context_dim"]:
            raise ValueError(
                f"{encoder.path}: the CLIP model there makes {encoder.context_dim}-wide contexts, the metadata "
                f"recorded {meta['context_dim']}; the directory holds another model than the one recorded"
            )
        return encoder

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        """Stays in evaluation mode (no dropout) even when the model that holds it trains."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Encode a batch of prompts.

        Returns:
            ``{"context": (B, L, D) float32, "context_mask": (B, L) bool}`` on the encoder's device, ``B`` =
            ``len(prompts)``, ``L`` = ``max_length``, ``D`` = ``context_dim``; True in the mask marks a real token.

        Raises:
            TypeError: ``prompts`` is a single str, or holds something that is not a str.
            ValueError: ``prompts`` is empty.
        """
        batch = _check_prompts(prompts)
        lengths = [len(ids) for ids in self.tokenizer(batch, truncation=False, verbose=False)["input_ids"]]
        cut = [i for i, n in enumerate(lengths) if n > self.max_length]
        if cut:
            warnings.warn(
                f"{len(cut)} of {len(batch)} prompts are longer than {self.max_length} tokens and were cut to "
                f"{self.max_length} (the first: prompt {cut[0]}, {lengths[cut[0]]} tokens)",
                stacklevel=2,
            )
        tokens = self.tokenizer(
            batch, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        input_ids = tokens["input_ids"].to(self.device)  # (B, L)
        mask = tokens["attention_mask"].to(self.device)  # (B, L), 1 = a real token
        with torch.no_grad():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return {"context": hidden.float(), "context_mask": mask.bool()}

    def forward(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        return self.encode(prompts)

    def to_metadata(self) -> dict[str, Any]:
        """``{"kind": "clip", "path", "context_dim", "max_length"}``: what :meth:`from_metadata` loads again."""
        return {
            "kind": "clip",
            "path": str(self.path),
            "context_dim": self.context_dim,
            "max_length": self.max_length,
        }

    def describe(self) -> dict[str, Any]:
        """The same record as :meth:`to_metadata`."""
        return self.to_metadata()

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, context_dim={self.context_dim}, max_length={self.max_length}"
