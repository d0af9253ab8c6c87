"""Activation extrema: the units a sparse growth event routes new connections from and to.

Per hidden unit, over a batch of inputs:

- **Bounded activations.** ``sigmoid`` is read as it is and ``tanh`` by its magnitude ``|a|``; both then lie
  in [0, 1]. The unit's score is its batch mean. It is a *high* extremum (saturated) when the score is above
  ``high`` (0.95), and a *low* extremum (dead) when it is below ``low`` (0.05).
- **relu** has no upper bound, so the rule is relative and uses firing frequencies.
  - High: the unit's mean activation is above ``high`` times the largest mean activation in its layer, i.e.
    it is within 5 % of the layer's strongest unit.
  - Low: the unit is positive on fewer than a ``low`` share (5 %) of the inputs. That is the usual
    "dead relu": it passes almost nothing downstream.
  - A layer whose units are all zero has no high extremum and only low ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOUNDED = ("sigmoid", "tanh")


def activation_extrema(
    h: Tensor, activation: str, *, high: float = 0.95, low: float = 0.05
) -> tuple[Tensor, Tensor]:
    """Indices of the high and the low extrema among the units of ``h (B, units)`` (the rules of the module
    docstring) -> ``(high_units, low_units)``, each a sorted 1-D long tensor."""
    if h.ndim != 2 or h.shape[0] == 0:
        raise ValueError(f"h must be a non-empty (batch, units) tensor, got {tuple(h.shape)}")
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    if activation in BOUNDED:
        score = (h.abs() if activation == "tanh" else h).mean(dim=0)  # (units,) in [0, 1]
        return (score > high).nonzero().squeeze(1), (score < low).nonzero().squeeze(1)
    if activation != "relu":
        raise ValueError(f"activation must be one of {(*BOUNDED, 'relu')}, got {activation!r}")
    mean = h.mean(dim=0)
    top = mean.max()
    high_units = (mean > high * top).nonzero().squeeze(1) if top > 0 else mean.new_zeros(0, dtype=torch.long)
    firing = (h > 0).double().mean(dim=0)  # (units,) share of inputs on which the unit is active
    return high_units, (firing < low).nonzero().squeeze(1)
