"""LoRA adapters on a network's convolutions and linear layers, through ``peft`` (``pip install 'polyscale[lora]'``).

A LoRA adapter adds to a layer of weight ``W`` a low-rank update ``(alpha / r) * B @ A`` (``A``: ``r x in``,
``B``: ``out x r``; for a convolution ``A`` is a convolution of the layer's kernel, stride and padding into
``r`` channels and ``B`` a 1x1 convolution). ``B`` starts at zero, so a freshly adapted network computes
exactly what the base network computes, bit for bit; training then moves only ``A`` and ``B``.

:func:`save_adapter` writes the adapter alone as an adapter directory (:mod:`polyscale.training.adapter_dir`:
``adapter_config.json`` + ``adapter_model.safetensors``). Its ``base`` entry identifies the network the adapter
was trained on: its class, its configuration and a SHA-256 of its weights (:func:`base_fingerprint`).
:func:`apply_adapter` refuses any other network. Nothing is ever unpickled. ``peft`` is imported only inside
the functions that need it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from polyscale.config import to_dict
from polyscale.training.adapter_dir import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterConfig,
    AdapterInfo,
    read_adapter,
    write_adapter,
)

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterConfig", "AdapterInfo", "ParameterCounts",
           "PeftNotInstalledError", "add_lora", "apply_adapter", "base_fingerprint", "has_lora",
           "lora_state_dict", "lora_targets", "merge_lora", "parameter_counts", "read_adapter", "require_peft",
           "save_adapter"]  # fmt: skip

ADAPTER_NAME = "default"  # peft's name for the one adapter a network carries here
TARGET_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)  # what LoRA adapts (attention projections: Linear)
_LORA_KEY = re.compile(r"\.lora_[A-Za-z_]+\.")  # state-dict keys of adapter tensors (lora_A, lora_B, ...)


class PeftNotInstalledError(ImportError, ValueError):
    """peft is missing. An ImportError, and a ValueError so that the command line reports it in one line."""


def _peft():
    """The ``peft`` package, or :class:`PeftNotInstalledError` saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise PeftNotInstalledError(
            "LoRA fine-tuning needs the peft package, which is not installed; install polyscale[lora] "
            "(pip install 'polyscale[lora]')",
            name="peft",
        ) from err
    return peft


def require_peft() -> None:
    """Fail early, before any work, when peft is missing (:class:`PeftNotInstalledError`)."""
    _peft()


class ParameterCounts(NamedTuple):
    trainable: int  # parameters with requires_grad (what the optimizer updates)
    total: int  # every parameter of the module


def parameter_counts(model: nn.Module) -> ParameterCounts:
    """How many of ``model``'s parameters train, and how many it has."""
    params = list(model.parameters())
    return ParameterCounts(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA layers."""
    return any(_LORA_KEY.search(f".{name}.") for name, _ in model.named_parameters())


def lora_targets(net: nn.Module, patterns: Sequence[str] = ()) -> list[str]:
    """Names of the modules of ``net`` a LoRA adapter adapts: every ``Conv1d/2d/3d`` and ``Linear``, or those
    whose name matches one of the glob ``patterns``.

    Raises:
        ValueError: a pattern matches none of them (names the pattern and some of the names), or none exist.
    """
    names = [name for name, m in net.named_modules() if isinstance(m, TARGET_TYPES)]
    if not names:
        raise ValueError(f"{type(net).__name__} has no Conv1d/2d/3d or Linear layer for LoRA to adapt")
    if not patterns:
        return names
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(
                f"LoRA target pattern {pattern!r} matches no Conv or Linear layer of {type(net).__name__}; "
                f"expected a glob over names such as {', '.join(names[:4])} (e.g. 'down.*' or '*.attn.*')"
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _inject(net: nn.Module, config: AdapterConfig, modules: Sequence[str]) -> nn.Module:
    """Put LoRA layers around ``modules`` (exact names) of ``net`` in place; only they stay trainable."""
    peft = _peft()
    exact = "^(" + "|".join(re.escape(n) for n in modules) + ")$"  # peft full-matches a string pattern
    lora = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=exact, bias="none")  # fmt: skip
    peft.inject_adapter_in_model(lora, net, adapter_name=ADAPTER_NAME)
    _match_geometry(net)
    net._polyscale_lora_patterns = config.targets  # type: ignore[assignment]  # recorded by save_adapter
    net.train(net.training)  # the new layers take the network's mode (eval stays eval: no adapter dropout)
    return net


def _match_geometry(net: nn.Module) -> None:
    """Give each convolution's ``A`` the padding mode and dilation of the convolution it adapts.

    Older peft versions build ``A`` with zero padding and no dilation whatever the base layer has, so on a
    circular (periodic) U-Net the adapter's update would see borders the network does not have, and merging
    would change the outputs. Neither setting changes the shape of ``A``'s weight.
    """
    for name in _lora_layers(net):
        layer: Any = net.get_submodule(name)  # a peft LoRA layer
        base = layer.get_base_layer()
        if not isinstance(base, nn.modules.conv._ConvNd):
            continue
        for a in layer.lora_A.values():
            a.padding_mode, a.dilation = base.padding_mode, base.dilation


def add_lora(net: nn.Module, config: AdapterConfig, *, seed: int | None = None) -> nn.Module:
    """Add a LoRA adapter to ``net`` in place and return it: every target layer (:func:`lora_targets`) gets
    ``A`` (random, from ``seed`` when given, without touching the caller's RNG state) and ``B = 0``, so the
    outputs are unchanged. Afterwards only the adapter's parameters have ``requires_grad``.

    Raises:
        ValueError: ``net`` already carries an adapter, or a target pattern matches nothing.
        ImportError: peft is not installed.
    """
    if has_lora(net):
        raise ValueError(f"{type(net).__name__} already carries a LoRA adapter; merge it (merge_lora) first")
    modules = lora_targets(net, config.targets)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return _inject(net, config, modules)


def lora_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors alone, under peft's names (``conv_in.lora_A.weight``, ...)."""
    if not has_lora(net):
        raise ValueError(f"{type(net).__name__} carries no LoRA adapter")
    _peft()
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(net, adapter_name=ADAPTER_NAME)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _base_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s state dict without adapter tensors, under the names of the plain network."""
    return {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if not _LORA_KEY.search(k)}


def base_fingerprint(net: nn.Module) -> str:
    """SHA-256 of the base weights of ``net`` (with or without an adapter: adapter tensors are left out), over
    every tensor's name, dtype, shape and bytes in name order. Equal weights give equal digests whatever the
    device or the file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_state(net).items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _base_identity(net: nn.Module) -> dict[str, Any]:
    config = getattr(net, "config", None)
    return {"class": type(net).__name__, "config": to_dict(config) if config is not None else None,
            "sha256": base_fingerprint(net)}  # fmt: skip


def _lora_layers(net: nn.Module) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, m in net.named_modules() if isinstance(m, BaseTunerLayer)]


def save_adapter(
    net: nn.Module,
    directory: str | Path,
    *,
    source: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapter of ``net`` alone to ``directory`` (:mod:`polyscale.training.adapter_dir`), atomically.

    Args:
        net: a network carrying a LoRA adapter (:func:`add_lora`).
        directory: target folder; an existing adapter directory there is replaced, anything else refused.
        source: where the base came from (a shipped model's name or a path), recorded for people to read.
        metadata: JSON-serialisable extras (e.g. how it was trained).

    Raises:
        ValueError: ``net`` has no adapter, adapter weights that are not finite, non-JSON metadata, or a target
            directory holding something else.
    """
    if not has_lora(net):
        raise ValueError(f"{type(net).__name__} carries no LoRA adapter to save")
    peft_config: Any = net.__dict__["peft_config"][ADAPTER_NAME]  # set by peft on injection
    weights = lora_state_dict(net)
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"refusing to save an adapter with non-finite weights ({bad[0]}); the training diverged"
        )
    header = {
        "rank": peft_config.r, "alpha": float(peft_config.lora_alpha), "dropout": float(peft_config.lora_dropout),
        "target_patterns": list(getattr(net, "_polyscale_lora_patterns", ())),
        "target_modules": _lora_layers(net), "base": {**_base_identity(net), "source": source},
        "peft_version": _peft().__version__, "metadata": to_dict(dict(metadata or {})),
    }  # fmt: skip
    return write_adapter(directory, header, weights)


def _check_base(info: AdapterInfo, net: nn.Module) -> None:
    """Refuse ``net`` unless it is the network ``info`` was trained on (architecture, then weights)."""
    made_for = f"adapter {info.path} was made for base model {info.base.get('source') or '(unnamed)'}"
    ours = _base_identity(net)
    if ours["class"] != info.base.get("class"):
        raise ValueError(f"{made_for} (a {info.base.get('class')}), but the model given is a {ours['class']}")
    theirs = info.base.get("config") or {}
    differ = [
        f"{k} {theirs.get(k)!r} vs {v!r}" for k, v in (ours["config"] or {}).items() if theirs.get(k) != v
    ]
    if differ:
        raise ValueError(f"{made_for}, whose architecture differs from the model given (adapter's base vs "
                         f"given: {'; '.join(differ)})")  # fmt: skip
    if ours["sha256"] != info.base.get("sha256"):
        raise ValueError(f"{made_for} (weights sha256 {str(info.base.get('sha256'))[:12]}), but the model "
                         f"given has other weights (sha256 {ours['sha256'][:12]}); load the base it was "
                         "trained on")  # fmt: skip


def apply_adapter(model: nn.Module, directory: str | Path, *, merge: bool = False) -> nn.Module:
    """Load the adapter in ``directory`` onto ``model`` in place and return ``model``.

    ``model`` is the base network, or a wrapper holding it as ``model.net`` (an ``EDMPrecond`` from
    ``load_denoiser``). The network must be the adapter's base: same class, configuration and weights, else a
    ValueError names both. With ``merge`` the adapter is folded into the weights (:func:`merge_lora`): a plain
    network again, computing the same up to rounding.

    Raises:
        FileNotFoundError / ValueError: see :func:`read_adapter`; another base; a network that already carries
            an adapter; an adapter file whose tensors do not fit its configuration.
    """
    net = getattr(model, "net", model)
    info = read_adapter(directory)
    if has_lora(net):
        raise ValueError(
            f"{type(net).__name__} already carries a LoRA adapter; load {directory} onto the base"
        )
    _check_base(info, net)
    weights_path = info.path / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"{info.path} has no {ADAPTER_WEIGHTS}; expected it beside {ADAPTER_CONFIG}")
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors reports a damaged file in several types
        raise ValueError(
            f"{weights_path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from None
    missing = [m for m in info.modules if m not in dict(net.named_modules())]
    if missing:
        raise ValueError(f"{info.path}: the model has no module {missing[0]!r} that the adapter adapts")
    _inject(net, info.config, info.modules)
    expected = {k: tuple(v.shape) for k, v in lora_state_dict(net).items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
        _unload(net, merge=False)  # take the half-loaded adapter off again
        raise ValueError(f"{weights_path} does not fit its {ADAPTER_CONFIG} (first mismatch: {wrong[0]})")
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(net, state, adapter_name=ADAPTER_NAME)
    if merge:
        merge_lora(net)
    return model


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold the adapter of ``net`` into its weights, ``W <- W + (alpha / r) B A``, and take the LoRA layers out,
    in place (what peft's ``merge_and_unload`` does); returns ``net``, now a plain network whose state dict has
    the base's keys (so ``save_pretrained`` saves it), every parameter trainable again.

    Raises:
        ValueError: ``net`` carries no adapter, or merging would make a weight NaN or infinite.
    """
    if not has_lora(net):
        raise ValueError(f"{type(net).__name__} carries no LoRA adapter to merge")
    return _unload(net, merge=True)


@torch.no_grad()
def _delta_weight(layer: Any) -> torch.Tensor:
    """``(alpha / r) B A`` in the shape of the adapted layer's weight.

    Linear: ``A (r, in)``, ``B (out, r)``. Convolution: ``A (r, in, *k)`` is a convolution of the layer's kernel
    into ``r`` channels and ``B (out, r, 1, ..)`` a 1x1 one; composed they are one convolution of kernel ``k``
    whose weight is ``B A`` taken position by position of the kernel.
    """
    a = layer.lora_A[ADAPTER_NAME].weight  # (r, in, *k)
    b = layer.lora_B[ADAPTER_NAME].weight.flatten(1)  # (out, r)
    return torch.einsum("or,ri...->oi...", b, a) * layer.scaling[ADAPTER_NAME]  # (out, in, *k)


def _unload(net: nn.Module, *, merge: bool) -> nn.Module:
    """Take the LoRA layers out of ``net``, folding them into the weights first when ``merge``."""
    updates = []
    for name in _lora_layers(net):  # every update is computed before any weight changes
        layer: Any = net.get_submodule(name)  # a peft LoRA layer
        base = layer.get_base_layer()
        delta = _delta_weight(layer).to(base.weight.dtype) if merge else None
        if delta is not None and not torch.isfinite(delta).all():
            raise ValueError(f"merging the adapter of {name} would make its weights NaN or infinite")
        updates.append((name, base, delta))
    for name, base, delta in updates:
        if delta is not None:
            with torch.no_grad():
                base.weight.add_(delta)
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name), child, base)
    for attr in ("peft_config", "_polyscale_lora_patterns"):
        if attr in net.__dict__:
            delattr(net, attr)
    net.requires_grad_(True)
    return net
