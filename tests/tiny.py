"""What several test files share: a tiny digits U-Net for runs of a few seconds, a tiny U-Net for unit tests,
and running the CLI in-process."""

from __future__ import annotations

from polyscale.cli.main import main

# a digits2d run small enough for a test: 8 base channels, two levels, batches of 8
TINY_DIGITS = [
    "model.base_channels=8",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_levels=[1]",
    "model.attention_kernel_sizes=[3]",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.log_every=1",
]


# a U-Net of a few thousand weights for unit tests (two levels, attention at the coarse one)
TINY_UNET = dict(
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_levels=(1,),
    attention_kernel_sizes=(3,),
    num_heads=2,
    norm_groups=4,
)


def perturbed(module, seed: int = 0):
    """``module`` with every all-zero parameter (zero-initialised output layers, biases) set to small random
    values, so that every path through it, cross-attention included, changes the output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def sets(*pairs: str) -> list[str]:
    """``--set`` flags for ``key=value`` pairs."""
    return [a for kv in pairs for a in ("--set", kv)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``polyscale argv`` run in-process (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err


# the words of the prompts the tests use; each gets merges that make it one token (every other text falls back
# to single bytes, which the vocabulary covers)
TINY_CLIP_WORDS = ("a", "handwritten", "seven", "the", "digit", "zero", "photo", "of", "cat", "dog")


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE uses (GPT-2's and CLIP's table)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(others))]


def build_tiny_clip(directory, *, seed: int = 0, max_length: int = 16, with_projection: bool = False):
    """Write a tiny randomly initialised CLIP text model (hidden size 32, 2 layers, 2 heads) and its BPE
    tokenizer into ``directory`` with ``save_pretrained`` (safetensors); return the directory as a Path.

    The vocabulary holds every byte alone and word-final (``x</w>``), one token per word of
    ``TINY_CLIP_WORDS``, and the start and end tokens last, as in OpenAI's CLIP."""
    import json
    import tempfile
    from pathlib import Path

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast

    alphabet = _byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[str] = []
    for word in TINY_CLIP_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: "s e", "se v", "sev e", "seve n</w>"
            if f"{parts[0]} {parts[1]}" not in merges:
                merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as raw:
        Path(raw, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(raw, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizerFast.from_pretrained(raw, model_max_length=max_length)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    with torch.random.fork_rng(devices=[]):  # the initialisation draws from the global generator
        torch.manual_seed(seed)
        model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
