"""Classifier-based sample quality: confidence and class coverage under a classifier trained on real data.

A generative model of labelled data (digits, MNIST-1D) is judged by a classifier fitted on the real training set:
good samples are classified confidently (high mean max-probability) and all classes appear (coverage). The same
numbers on held-out real data give the floor to compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class ClassifierReport:
    """Confidence and coverage of a set of samples under a reference classifier."""

    mean_max_prob: float  # mean over samples of the largest class probability
    class_fractions: list[float]  # share of samples assigned to each class (argmax)
    accuracy: float | None = None  # only when true labels were given (real data)

    @property
    def min_class_fraction(self) -> float:
        return min(self.class_fractions)


class ReferenceClassifier:
    """A multinomial logistic-regression classifier on flattened samples (scikit-learn).

    Args:
        x: real training data ``(N, C, *spatial)``.
        labels: ``(N,)`` integer classes.
        C: inverse regularisation strength of the logistic regression.
    """

    def __init__(self, x: Tensor, labels: Tensor, *, C: float = 1.0, max_iter: int = 3000) -> None:
        from sklearn.linear_model import LogisticRegression

        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but labels has {labels.shape[0]}")
        self.sample_shape = tuple(x.shape[1:])
        self.num_classes = int(labels.max()) + 1
        self.model = LogisticRegression(C=C, max_iter=max_iter)
        self.model.fit(self._flatten(x), labels.cpu().numpy())

    def _flatten(self, x: Tensor) -> np.ndarray:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"classifier was fitted on samples of shape {self.sample_shape}, got {tuple(x.shape[1:])}"
            )
        return x.detach().float().cpu().reshape(x.shape[0], -1).numpy()  # (B, C * prod(spatial))

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, num_classes)``."""
        return torch.from_numpy(self.model.predict_proba(self._flatten(x)))

    def report(self, x: Tensor, labels: Tensor | None = None) -> ClassifierReport:
        """Confidence and coverage of samples ``x`` (and accuracy when true ``labels`` are given)."""
        probs = self.predict_proba(x)
        pred = probs.argmax(dim=1)
        counts = torch.bincount(pred, minlength=self.num_classes).double()
        accuracy = None if labels is None else float((pred == labels.cpu()).double().mean())
        return ClassifierReport(
            mean_max_prob=float(probs.max(dim=1).values.mean()),
            class_fractions=(counts / counts.sum()).tolist(),
            accuracy=accuracy,
        )
