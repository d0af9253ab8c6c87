"""CLIPTextEncoder on a tiny randomly initialised CLIP text model and BPE tokenizer that the tests write
themselves (tests/tiny.py: build_tiny_clip), loaded from disk through transformers with nothing downloaded."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polyscale.nn.clip_text import CLIPTextEncoder
from polyscale.nn.text import PromptEncoder
from tiny import build_tiny_clip

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a handwritten seven", "the digit 7", ""]
TOKENS = [5, 5, 2]  # start + words + end: each tiny-vocabulary word and each digit is one token


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def encoder(clip_dir) -> CLIPTextEncoder:
    return CLIPTextEncoder.from_directory(clip_dir)


def copy_of(clip_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clip_dir, tmp_path / "copy"))


def test_shapes_mask_and_protocol(encoder):
    out = encoder.encode(PROMPTS)
    assert set(out) == {"context", "context_mask"}
    context, mask = out["context"], out["context_mask"]
    assert context.shape == (3, 16, 32) and context.dtype == torch.float32
    assert mask.shape == (3, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == TOKENS
    for row, n in zip(mask, TOKENS, strict=True):  # the real tokens come first, padding after
        assert row[:n].all() and not row[n:].any()
    assert torch.isfinite(context).all()
    assert encoder.context_dim == 32 and encoder.max_length == 16
    assert isinstance(encoder, PromptEncoder)


def test_context_is_the_models_last_hidden_state(encoder, clip_dir):
    # oracle: the CLIP model run directly on each prompt's tokens alone, no padding, no mask
    model = transformers.CLIPTextModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(clip_dir, local_files_only=True)
    out = encoder.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, n)
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0]  # (n, D)
        assert ids.shape[1] == TOKENS[i]
        torch.testing.assert_close(out["context"][i, : TOKENS[i]], expected, rtol=1e-5, atol=1e-5)


def test_deterministic_and_batch_independent(encoder, clip_dir):
    first, second = encoder.encode(PROMPTS), encoder.encode(PROMPTS)
    assert torch.equal(first["context"], second["context"])
    assert torch.equal(first["context_mask"], second["context_mask"])
    again = CLIPTextEncoder.from_directory(clip_dir).encode(PROMPTS)
    assert torch.equal(first["context"], again["context"])
    alone = encoder.encode([PROMPTS[1]])  # a prompt's context does not depend on its batch
    torch.testing.assert_close(alone["context"][0], first["context"][1], rtol=1e-5, atol=1e-5)


def test_different_prompts_give_different_contexts(encoder):
    out = encoder.encode(["a handwritten seven", "the digit 7", "a photo of a cat"])
    context, last = out["context"], out["context_mask"].sum(1) - 1  # the end token sees the whole prompt
    # causal attention: a position sees only what comes before it, so a shared start gives equal vectors
    torch.testing.assert_close(context[0, :2], context[2, :2])  # start token, "a"
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert (context[i, last[i]] - context[j, last[j]]).abs().max() > 1e-3
        assert (context[i, 1] - context[j, 1]).abs().max() > 1e-3 or (i, j) == (0, 2)


def test_frozen_no_trainable_parameters(encoder):
    params = list(encoder.parameters())
    assert params and not any(p.requires_grad for p in params)
    parent = torch.nn.ModuleDict({"text": encoder, "head": torch.nn.Linear(32, 1)})
    parent.train()  # a model that trains with the encoder inside it keeps the encoder in evaluation mode
    assert not encoder.training and not encoder.model.training
    assert [p.requires_grad for p in parent.parameters()].count(True) == 2  # the head's weight and bias
    out = encoder.encode(["a cat"])
    assert not out["context"].requires_grad
    parent["head"](out["context"]).sum().backward()
    assert all(p.grad is None for p in params)


def test_metadata_round_trip(encoder, clip_dir):
    meta = encoder.to_metadata()
    assert meta == {"kind": "clip", "path": str(clip_dir.resolve()), "context_dim": 32, "max_length": 16}
    assert encoder.describe() == meta
    stored = json.loads(json.dumps(meta))  # what a model directory's config.json holds
    reloaded = CLIPTextEncoder.from_metadata(stored)
    assert reloaded.to_metadata() == meta
    assert torch.equal(reloaded.encode(PROMPTS)["context"], encoder.encode(PROMPTS)["context"])


def test_max_length_is_recorded_and_reloaded(clip_dir):
    short = CLIPTextEncoder.from_directory(clip_dir, max_length=8)
    out = short.encode(PROMPTS)
    assert out["context"].shape == (3, 8, 32) and out["context_mask"].sum(1).tolist() == TOKENS
    assert short.to_metadata()["max_length"] == 8
    assert CLIPTextEncoder.from_metadata(short.to_metadata()).max_length == 8


def test_long_prompt_is_cut_with_a_warning(encoder):
    with pytest.warns(UserWarning, match=r"1 of 2 prompts are longer than 16 tokens .* prompt 1, 32 tokens"):
        out = encoder.encode(["a cat", "a " * 30])
    assert out["context"].shape == (2, 16, 32)
    assert out["context_mask"][1].all()


@pytest.mark.parametrize("prompts", [[], ()])
def test_empty_prompt_list_is_refused(encoder, prompts):
    with pytest.raises(ValueError, match="at least one prompt, got an empty sequence"):
        encoder.encode(prompts)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (["a cat", 7], r"prompt 1 must be a str, got a int \(7\)"),
        ([None], r"prompt 0 must be a str, got a NoneType"),
        ([b"a cat"], r"prompt 0 must be a str, got a bytes"),
        ("a cat", r"sequence of str, got a single str 'a cat'; wrap it in a list"),
        (7, r"sequence of str, got a int"),
    ],
)
def test_bad_prompts_are_refused(encoder, prompts, message):
    with pytest.raises(TypeError, match=message) as err:
        encoder.encode(prompts)
    assert "\n" not in str(err.value)


def _gpt2_dir(tmp_path: Path) -> Path:
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


class _RunsCode:
    """Unpickling this makes a directory: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _pickle_only(clip_dir: Path, tmp_path: Path) -> Path:
    path = copy_of(clip_dir, tmp_path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(tmp_path / "unpickled")))
    return path


def _without(*names: str):
    def make(clip_dir: Path, tmp_path: Path) -> Path:
        path = copy_of(clip_dir, tmp_path)
        for name in names:
            (path / name).unlink()
        return path

    return make


def _edit_config(**changes):
    def make(clip_dir: Path, tmp_path: Path) -> Path:
        path = copy_of(clip_dir, tmp_path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **changes}))
        return path

    return make


def _broken_json(clip_dir: Path, tmp_path: Path) -> Path:
    path = copy_of(clip_dir, tmp_path)
    (path / "config.json").write_text("{not json")
    return path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda d, t: t / "nowhere",
            FileNotFoundError,
            r"'.*nowhere' does not exist; expected a local directory",
        ),
        (
            lambda d, t: d / "config.json",
            ValueError,
            r"config.json is a file; expected a directory .*its folder",
        ),
        (
            lambda d, t: Path(t / "empty").mkdir() or t / "empty",
            FileNotFoundError,
            r"has no config.json; .*\[\]",
        ),
        (lambda d, t: _gpt2_dir(t), ValueError, r"expected a CLIP text model .* found model_type 'gpt2'"),
        (
            _pickle_only,
            ValueError,
            r"weights only as a pickle \(pytorch_model.bin\).*convert it to safetensors",
        ),
        (_without("model.safetensors"), FileNotFoundError, r"has no weights; expected model.safetensors"),
        (
            _without("tokenizer.json"),
            FileNotFoundError,
            r"no tokenizer files; expected tokenizer.json or vocab",
        ),
        (_broken_json, ValueError, r"config.json is not valid JSON"),
        (_edit_config(model_type="bert"), ValueError, r"found model_type 'bert'"),
        (
            _edit_config(architectures=["CLIPTextModelWithProjection"]),
            ValueError,
            r"do not fill a CLIPTextModelWithProjection; missing 1 tensors such as \['text_projection.weight'\]",
        ),
    ],
    ids=[
        "missing",
        "file",
        "no-config",
        "gpt2",
        "pickle-only",
        "no-weights",
        "no-tokenizer",
        "bad-json",
        "not-clip",
        "missing-tensors",
    ],
)
def test_bad_directories_are_refused(clip_dir, tmp_path, make, error, message):
    path = make(clip_dir, tmp_path)
    with pytest.raises(error, match=message) as err:
        CLIPTextEncoder.from_directory(path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "unpickled").exists()  # a pickle is refused before anything reads it


@pytest.mark.parametrize("max_length", [1, 17, 0, "16", 8.0, True])
def test_max_length_out_of_range_is_refused(clip_dir, max_length):
    with pytest.raises(ValueError, match=rf"from 2 .* to the model's 16 positions, got {max_length!r}"):
        CLIPTextEncoder.from_directory(clip_dir, max_length=max_length)


def test_bad_metadata_is_refused(encoder, tmp_path, clip_dir):
    meta = encoder.to_metadata()
    with pytest.raises(ValueError, match=r'"kind": "clip", found kind \'t5\''):
        CLIPTextEncoder.from_metadata({**meta, "kind": "t5"})
    with pytest.raises(ValueError, match=r"lacks \['max_length'\]"):
        CLIPTextEncoder.from_metadata({k: v for k, v in meta.items() if k != "max_length"})
    with pytest.raises(ValueError, match=r"makes 32-wide contexts, the metadata recorded 64"):
        CLIPTextEncoder.from_metadata({**meta, "context_dim": 64})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTextEncoder.from_metadata({**meta, "path": str(tmp_path / "moved")})


def test_loading_uses_no_network(clip_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = CLIPTextEncoder.from_directory(clip_dir)
    assert encoder.encode(["a cat"])["context"].shape == (1, 16, 32)


def test_with_projection_and_whole_clip_directories(clip_dir, encoder, tmp_path):
    projected = CLIPTextEncoder.from_directory(build_tiny_clip(tmp_path / "proj", with_projection=True))
    assert type(projected.model).__name__ == "CLIPTextModelWithProjection"
    assert projected.context_dim == 32 and projected.encode(PROMPTS)["context"].shape == (3, 16, 32)

    # a whole CLIPModel (text and vision towers) whose text tower holds the tiny model's weights
    text = transformers.CLIPTextModel.from_pretrained(clip_dir, local_files_only=True)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=text.config.to_dict(), vision_config={**vision, "image_size": 8, "patch_size": 4}
    )
    whole = transformers.CLIPModel(config)
    whole.text_model.load_state_dict(text.state_dict())
    whole.save_pretrained(tmp_path / "whole")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(clip_dir / name, tmp_path / "whole")
    loaded = CLIPTextEncoder.from_directory(tmp_path / "whole")
    assert type(loaded.model).__name__ == "CLIPTextModel"
    torch.testing.assert_close(loaded.encode(PROMPTS)["context"], encoder.encode(PROMPTS)["context"])


def test_weights_under_a_text_model_prefix_load(clip_dir, encoder, tmp_path):
    # transformers 4 saves a CLIPTextModel's tensors as text_model.* (Stable Diffusion's text_encoder/ holds
    # such a file); transformers 5 saves them without the prefix: both layouts load
    from safetensors.torch import load_file, save_file

    path = copy_of(clip_dir, tmp_path)
    state = load_file(path / "model.safetensors")
    prefixed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    save_file(prefixed, path / "model.safetensors", metadata={"format": "pt"})
    loaded = CLIPTextEncoder.from_directory(path)
    assert torch.equal(loaded.encode(PROMPTS)["context"], encoder.encode(PROMPTS)["context"])


@pytest.mark.long  # a fresh interpreter imports torch
def test_core_import_does_not_need_transformers(clip_dir):
    # with transformers made unimportable, the module imports and loading says how to install the extra
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import polyscale.nn, polyscale.nn.clip_text as m\n"
        "try:\n"
        f"    m.CLIPTextEncoder.from_directory({str(clip_dir)!r})\n"
        "except ImportError as err:\n"
        "    print('ERROR', err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERROR CLIPTextEncoder needs the transformers package" in done.stdout
    assert "pip install 'polyscale[clip]'" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_matches_cpu(clip_dir, encoder):
    on_gpu = CLIPTextEncoder.from_directory(clip_dir, device="cuda")
    out = on_gpu.encode(PROMPTS)
    assert out["context"].device.type == "cuda" and out["context_mask"].device.type == "cuda"
    assert out["context"].dtype == torch.float32
    torch.testing.assert_close(out["context"].cpu(), encoder.encode(PROMPTS)["context"], rtol=1e-4, atol=1e-4)
    assert torch.equal(out["context_mask"].cpu(), encoder.encode(PROMPTS)["context_mask"])
