"""Captions for labelled datasets: each class described by a few sentence templates, so a text-conditioned
model learns from phrasings ("a handwritten seven", "the digit 7") and is tested on phrasings it never saw.

``{word}`` in a template is the class's name in words and ``{numeral}`` its numeral (digits); datasets
without digit names use ``{word}`` = the class name for both. Templates are split in two fixed sets:
:data:`TRAIN_TEMPLATES` (what training draws from) and :data:`HELD_OUT_TEMPLATES` (phrasings kept out of
training, to measure how a model follows prompts it was not trained on).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import Dataset

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {numeral}",
    "the digit {word}",
    "a {word}",
    "{numeral}",
    "an image of the number {word}",
    "a drawing of a {numeral}",
    "number {numeral} written by hand",
)
HELD_OUT_TEMPLATES = (
    "a {numeral}, handwritten",
    "the number {numeral}",
    "an image of a handwritten {word}",
    "{word}, drawn by hand",
    "digit {word}",
)


def class_words(class_names: Sequence[str] | None, num_classes: int) -> list[tuple[str, str]]:
    """``(word, numeral)`` naming each class: the digit words and numerals for ten unnamed classes or classes
    named 0-9, else the class names (lower case) for both."""
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if names == [str(i) for i in range(10)]:
        return list(zip(DIGIT_WORDS, names, strict=True))
    return [(n.lower(), n.lower()) for n in names]


def caption(template: str, word: str, numeral: str) -> str:
    """``template`` filled in for one class."""
    return template.format(word=word, numeral=numeral)


def caption_words(class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """Every word the training captions of these classes use, sorted: a text encoder's vocabulary."""
    words: set[str] = set()
    for word, numeral in class_words(class_names, num_classes):
        for template in TRAIN_TEMPLATES:
            words.update(re.findall(r"[a-z0-9]+", caption(template, word, numeral).lower()))
    return tuple(sorted(words))


class Captioned(Dataset):
    """A labelled dataset whose items also carry a caption of their class, turned into the network's
    keyword arguments by ``encode`` (a list of captions -> ``{"tokens": (B, L)}`` or a context).

    The template of item ``index`` in epoch ``e`` is drawn from ``templates`` by a generator seeded with
    ``(seed, e, index)``, so a resumed run sees the captions it would have seen. ``keep_labels=False`` drops
    the class labels (a model conditioned on text alone)."""

    def __init__(
        self,
        dataset: Dataset,
        encode,
        *,
        class_names: Sequence[str] | None,
        num_classes: int,
        templates: Sequence[str] = TRAIN_TEMPLATES,
        seed: int = 0,
        keep_labels: bool = False,
    ) -> None:
        if not templates:
            raise ValueError("captions need at least one template")
        self.dataset, self.encode = dataset, encode
        self.words = class_words(class_names, num_classes)
        self.templates = tuple(templates)
        self.seed, self.epoch, self.keep_labels = seed, 0, keep_labels
        self._cache: dict[str, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def caption_of(self, index: int, label: int) -> str:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        word, numeral = self.words[label]
        return caption(rng.choice(self.templates), word, numeral)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index])
        if "class_labels" not in item:
            raise ValueError("captions need a labelled dataset (items with class_labels)")
        text = self.caption_of(index, int(item["class_labels"]))
        if text not in self._cache:  # few distinct captions: encode each once
            self._cache[text] = {k: v[0] for k, v in self.encode([text]).items()}
        item.update(self._cache[text])
        if not self.keep_labels:
            item.pop("class_labels")
        return item


__all__ = [
    "DIGIT_WORDS",
    "HELD_OUT_TEMPLATES",
    "TRAIN_TEMPLATES",
    "Captioned",
    "caption",
    "caption_words",
    "class_words",
]
