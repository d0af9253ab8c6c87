"""What a user asks a conditional model for, as the network's keyword arguments: class labels and prompts
for ``N`` samples, the prompt encoder a model was trained with, and the guided denoiser that samples them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polyscale.diffusion.guidance import ClassifierFreeGuidance
from polyscale.nn.text import PromptEncoder
from polyscale.nn.unet import UNet

Condition = dict[str, Tensor]


def prompt_encoder(net: UNet, text_encoder: Mapping[str, Any] | None = None) -> PromptEncoder | None:
    """The encoder that turns prompts into ``net``'s keyword arguments: its built-in text encoder, or the
    external one its model directory records (``text_encoder`` metadata, e.g. a local CLIP directory);
    None for a model that takes no text."""
    if net.text_encoder is not None:
        return net.text_encoder
    if net.config.context_dim is None:
        return None
    if text_encoder is None:
        raise ValueError(
            "the model takes a context of width "
            f"{net.config.context_dim} but its directory records no text encoder to make one from prompts"
        )
    from polyscale.nn.clip_text import CLIPTextEncoder  # optional: needs transformers

    return CLIPTextEncoder.from_metadata(dict(text_encoder))


def _as_list(value: Any, name: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | int | float) or isinstance(value, Tensor) and value.ndim == 0:
        return [value]  # one value (checked by the caller, which names it), never iterated: b"7" is not [55]
    try:
        values = list(value)
    except TypeError:
        raise ValueError(
            f"{name} must be one value or a sequence, got {type(value).__name__} {value!r}"
        ) from None
    if not values:
        raise ValueError(f"{name} must not be empty (leave it out instead)")
    return values


def check_class_labels(net: UNet, labels: Sequence[Any]) -> list[int]:
    """``labels`` as ints in ``0 .. num_classes - 1``; a one-line ValueError for an unconditional model, a
    label out of range or one that is not an integer."""
    classes = net.config.num_classes
    if classes is None:
        raise ValueError(
            "this model is unconditional: class labels need a model trained with classes (model.num_classes), "
            f"got {list(labels)}"
        )
    out = []
    for label in labels:
        value = int(label) if isinstance(label, Tensor) else label
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"class labels must be integers in 0..{classes - 1}, got {label!r}")
        if not 0 <= value < classes:
            raise ValueError(
                f"class label {value} is out of range: the model has {classes} classes (0..{classes - 1})"
            )
        out.append(value)
    return out


def build_condition(
    net: UNet,
    num_samples: int,
    *,
    class_labels: int | Sequence[int] | Tensor | None = None,
    prompts: str | Sequence[str] | None = None,
    encoder: PromptEncoder | None = None,
    device: torch.device | str = "cpu",
) -> Condition:
    """The keyword arguments of ``num_samples`` samples: sample ``i`` gets ``class_labels[i % len]`` and
    ``prompts[i % len]``. A class-conditional model without labels samples the classes in turn (0, 1, ...);
    a text model without prompts samples unconditionally (the empty prompt). Every tensor is ``(N, ...)``
    on ``device``.

    Raises:
        ValueError: labels for an unconditional model or out of range; prompts for a model that takes no
            text; a prompt that is not a string.
    """
    labels, texts = _as_list(class_labels, "class_labels"), _as_list(prompts, "prompts")
    keys = net.condition_keys
    cond: Condition = {}
    if labels is not None or "class_labels" in keys:
        if labels is None:
            labels = list(range(net.config.num_classes or 0))
        checked = check_class_labels(net, labels)
        cond["class_labels"] = torch.tensor([checked[i % len(checked)] for i in range(num_samples)])
    text_keys = [k for k in keys if k != "class_labels"]
    if texts is not None and not text_keys:
        raise ValueError(
            f"this model was not trained with text: a prompt needs a text-conditioned model, got {texts[0]!r}"
        )
    if text_keys:
        if encoder is None:
            raise ValueError("this model is text-conditioned: prompts need its prompt encoder, got none")
        if texts is not None and any(not isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise ValueError(f"prompts must be strings, got {type(bad).__name__} {bad!r}")
        distinct = list(dict.fromkeys(texts if texts is not None else [""]))
        encoded = {k: v.cpu() for k, v in encoder.encode(distinct).items()}  # (P, ...) per key
        index = torch.tensor(
            [distinct.index(texts[i % len(texts)]) if texts else 0 for i in range(num_samples)]
        )
        cond.update({k: v[index] for k, v in encoded.items()})  # (N, ...)
        if texts is None:  # no prompt: every sample unconditional
            cond.update({k: v for k, v in net.null_condition(cond).items() if k in text_keys})
    return {k: v.to(device) for k, v in cond.items()}


def slice_condition(cond: Condition, start: int, stop: int) -> Condition:
    """Rows ``start:stop`` of every tensor of ``cond``."""
    return {k: v[start:stop] for k, v in cond.items()}


def trained_with_dropout(experiment: Mapping[str, Any] | None, cond: Condition) -> bool:
    """Whether the run that trained a model dropped the conditions in ``cond`` (so its unconditional
    prediction, which guidance needs, was trained); True when unknown."""
    train = (experiment or {}).get("train")
    if not isinstance(train, Mapping):
        return True
    labels = "class_labels" not in cond or float(train.get("label_dropout", 0.0)) > 0
    context = (
        not any(k in cond for k in ("tokens", "context")) or float(train.get("context_dropout", 0.0)) > 0
    )
    return labels and context


def guided(
    denoiser: nn.Module,
    net: UNet,
    cond: Condition,
    guidance_scale: float,
    *,
    experiment: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``denoiser`` wrapped in classifier-free guidance at ``guidance_scale`` (itself when there is no condition
    or the scale is 1). Warns when the model was trained without conditioning dropout (guidance then mixes
    in an unconditional prediction it never learned)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise ValueError(f"guidance scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {guidance_scale}")
    if not cond or guidance_scale == 1:
        return denoiser
    if not trained_with_dropout(experiment, cond):
        warnings.warn(
            f"guidance scale {guidance_scale} on a model trained without conditioning dropout "
            "(train.label_dropout / train.context_dropout = 0): its unconditional prediction is untrained, "
            "so guidance may degrade the samples; use --guidance-scale 1",
            UserWarning,
            stacklevel=2,
        )
    return ClassifierFreeGuidance(denoiser, scale=guidance_scale, uncond=net.null_condition)


__all__ = [
    "build_condition",
    "check_class_labels",
    "guided",
    "prompt_encoder",
    "slice_condition",
    "trained_with_dropout",
]
