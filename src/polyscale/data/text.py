"""Character-level text corpora for language models: any text file of the user's, or the default
corpus shipped inside the package.

The default is Shakespeare, the corpus of nanoGPT's ``shakespeare_char`` benchmark (1,115,394 characters,
65 distinct; public domain), stored gzip-compressed as ``polyscale/data/corpora/shakespeare.txt.gz``, so
nothing downloads. As nanoGPT does, the first 90 % of the characters are the training split and the last
10 % the validation split; the vocabulary is the sorted set of characters in the whole text.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "val")


def default_corpus_text() -> str:
    """The shipped Shakespeare text."""
    data = resources.files("polyscale.data").joinpath("corpora/shakespeare.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


@dataclass
class CharCorpus:
    """A text encoded one token per character: ``train`` and ``val`` are 1-D long tensors of token ids."""

    chars: list[str]  # the vocabulary, sorted; token id i is chars[i]
    train: Tensor
    val: Tensor

    @classmethod
    def from_text(cls, text: str, *, val_fraction: float = 0.1) -> CharCorpus:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if len(text) < 2:
            raise ValueError(f"the text needs at least 2 characters, got {len(text)}")
        chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(chars)}
        ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        n = int(len(ids) * (1 - val_fraction))
        return cls(chars, ids[:n], ids[n:])

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, val_fraction: float = 0.1) -> CharCorpus:
        """The corpus of a UTF-8 text file, or of the shipped default when ``path`` is None."""
        if path is None:
            return cls.from_text(default_corpus_text(), val_fraction=val_fraction)
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory, expected a UTF-8 text file")
        if not path.is_file():
            raise FileNotFoundError(f"no text file at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err})") from None
        return cls.from_text(text, val_fraction=val_fraction)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        lookup = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(lookup))
        if unknown:
            raise ValueError(f"characters outside the vocabulary: {unknown[:10]}")
        return torch.tensor([lookup[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())

    def batch(
        self, split: str, batch_size: int, block_size: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, y)``, each ``(batch_size, block_size)``: random windows of the split and the same windows
        shifted by one character (the next-character targets)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        data = self.train if split == "train" else self.val
        if len(data) <= block_size:
            raise ValueError(
                f"the {split} split has {len(data)} characters, need more than block_size={block_size}"
            )
        start = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        offsets = torch.arange(block_size)
        x = data[start[:, None] + offsets]  # (B, T)
        y = data[start[:, None] + offsets + 1]
        return x, y
