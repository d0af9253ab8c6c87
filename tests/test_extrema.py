"""Activation extrema on constructed activations."""

from __future__ import annotations

import pytest
import torch

from polyscale.growth import activation_extrema


def test_bounded_activations_use_fixed_thresholds():
    h = torch.tensor([[0.99, 0.5, 0.01, -0.98], [0.97, 0.4, 0.03, -0.99]])  # 4 units, batch 2
    high, low = activation_extrema(h, "tanh")
    assert high.tolist() == [0, 3] and low.tolist() == [2]  # tanh reads |a|: unit 3 is saturated too
    high, low = activation_extrema(h.clamp(min=0), "sigmoid")
    assert high.tolist() == [0] and low.tolist() == [2, 3]


def test_relu_rule_is_relative_and_uses_firing_frequency():
    h = torch.zeros(100, 4)
    h[:, 0] = 10.0  # the strongest unit
    h[:, 1] = 9.7  # within 5 % of it
    h[:3, 2] = 50.0  # fires on 3 % of the inputs: dead by frequency, though its mean (1.5) is not tiny
    h[:, 3] = 1.0
    high, low = activation_extrema(h, "relu")
    assert high.tolist() == [0, 1] and low.tolist() == [2]
    high, low = activation_extrema(torch.zeros(5, 3), "relu")
    assert high.numel() == 0 and low.tolist() == [0, 1, 2]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(batch, units\)"):
        activation_extrema(torch.zeros(3), "tanh")
    with pytest.raises(ValueError, match="low < high"):
        activation_extrema(torch.zeros(2, 2), "tanh", high=0.1, low=0.2)
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_extrema(torch.zeros(2, 2), "gelu")
