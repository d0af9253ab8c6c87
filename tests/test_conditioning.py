"""Conditioning on text and labels: cross-attention to a context in the N-D U-Net, the built-in word-level
text encoder, null conditions and build_condition, conditioning dropout in training, a text-conditioned
digits run through the CLI, a CLIP-conditioned run, and the requested-class row of evaluate.
Classifier-free guidance, its warning and per-sample noise are in test_guidance.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import polyscale
from polyscale.cli.main import main
from polyscale.data.captions import caption_words
from polyscale.nn.text import (
    PAD,
    START,
    UNKNOWN,
    CrossAttentionBlock,
    PromptEncoder,
    TextEncoderConfig,
    WordTextEncoder,
    split_words,
)
from polyscale.nn.unet import UNet
from polyscale.pipelines.conditioning import build_condition
from polyscale.pipelines.evaluate import evaluate_checkpoint, requested_class_row, requested_classes
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.sample import sample_checkpoint
from polyscale.pipelines.train import train_experiment
from polyscale.training.config import TrainConfig
from polyscale.training.loop import _drop_conditioning
from tiny import TINY_DIGITS, TINY_UNET, build_tiny_clip, perturbed, run_cli, sets

VOCAB = ("a", "handwritten", "one", "seven", "the", "digit")
ID = {word: i + 3 for i, word in enumerate(VOCAB)}  # ids 0-2 are padding, start and unknown
TEXT = TextEncoderConfig(vocabulary=VOCAB, width=8, num_layers=1, num_heads=2, max_length=6)


def text_net(dims: int = 2, **kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(dims=dims, in_channels=1, text_encoder=TEXT, **{**TINY_UNET, **kwargs})


def context_net(dims: int = 2, **kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(dims=dims, in_channels=1, context_dim=6, **{**TINY_UNET, **kwargs})


def cross_blocks(net: torch.nn.Module) -> list[CrossAttentionBlock]:
    return [m for m in net.modules() if isinstance(m, CrossAttentionBlock)]


# ------------------------------------------------------------------------------------------ U-Net with a context


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shapes_with_an_external_context_and_with_the_built_in_encoder(dims):
    x, c_noise = torch.randn(2, 2, *[8] * dims), torch.randn(2)
    external = UNet(dims=dims, in_channels=2, out_channels=3, context_dim=6, **TINY_UNET)
    context = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert external(x, c_noise, context=context, context_mask=mask).shape == (2, 3, *[8] * dims)
    assert external(x, c_noise, context=context).shape == (2, 3, *[8] * dims)  # no mask: every token real
    assert external.condition_keys == ("context", "context_mask")

    own = UNet(dims=dims, in_channels=2, out_channels=3, num_classes=3, text_encoder=TEXT, **TINY_UNET)
    tokens = own.encode_prompts(["a handwritten seven", ""])["tokens"]
    assert tokens.shape == (2, TEXT.max_length) and tokens.dtype == torch.long
    assert own(x, c_noise, torch.tensor([0, 3]), tokens=tokens).shape == (2, 3, *[8] * dims)
    assert own.condition_keys == ("class_labels", "tokens")
    # cross-attention at the attention levels by default (level 1: one encoder stage, the middle, two decoder
    # stages), at every level asked for otherwise (level 0 adds one encoder and two decoder stages)
    assert len(cross_blocks(external)) == len(cross_blocks(own)) == 4
    assert len(cross_blocks(context_net(dims, cross_attention_levels=(0, 1)))) == 7


def test_a_new_networks_cross_attention_is_the_identity():
    net = context_net()
    blocks = cross_blocks(net)
    assert blocks
    context, mask = torch.randn(2, 5, 6), torch.tensor([[True] * 5, [True] + [False] * 4])
    for block in blocks:
        assert not block.proj.weight.any() and not block.proj.bias.any()
        h = torch.randn(2, block.q.in_features, 4, 4)
        assert torch.equal(block(h, context, mask), h)
    # a network whose other weights have moved still ignores the context while the projections are zero
    perturbed(net)
    for block in blocks:
        torch.nn.init.zeros_(block.proj.weight)
        torch.nn.init.zeros_(block.proj.bias)
    net.eval()
    x, c_noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    out = net(x, c_noise, context=context, context_mask=mask)
    assert out.abs().sum() > 0
    assert torch.equal(out, net(x, c_noise, context=torch.randn(2, 5, 6)))
    perturbed(net, seed=1)  # now the projections are not zero: the context matters
    assert not torch.allclose(net(x, c_noise, context=context), net(x, c_noise, context=2 * context))


def test_the_output_depends_on_the_prompt():
    net = perturbed(text_net()).eval()
    x, c_noise = torch.randn(1, 1, 8, 8).repeat(3, 1, 1, 1), torch.zeros(3)
    tokens = net.encode_prompts(["a handwritten seven", "a handwritten one", "a handwritten seven"])["tokens"]
    out = net(x, c_noise, tokens=tokens)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(out[0], out[2], atol=1e-6)


def test_masked_context_tokens_do_not_change_the_output():
    net = perturbed(context_net()).eval()
    x, c_noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    context = torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    out = net(x, c_noise, context=context, context_mask=mask)
    padded = context.clone()
    padded[~mask] = 100 * torch.randn(int((~mask).sum()), 6)
    assert torch.equal(net(x, c_noise, context=padded, context_mask=mask), out)
    # control: the same change at a visible token moves that sample's output, and only that sample's
    visible = context.clone()
    visible[0, 1] += 1
    moved = net(x, c_noise, context=visible, context_mask=mask)
    assert not torch.allclose(moved[0], out[0], atol=1e-5)
    assert torch.equal(moved[1], out[1])


def test_trailing_padding_of_the_prompt_does_not_change_the_output():
    net = perturbed(text_net()).eval()
    x, c_noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    tokens = net.encode_prompts(["a seven", "one"])["tokens"]  # (2, 6): at most 3 real tokens
    assert (tokens[:, 3:] == PAD).all()
    full, short = net(x, c_noise, tokens=tokens), net(x, c_noise, tokens=tokens[:, :3])
    assert torch.allclose(full, short, atol=1e-6)


def _forward_error_cases():
    ctx = torch.randn(2, 5, 6)
    tokens = torch.tensor([[START, 3, 0], [START, 4, 5]])
    return [
        ("context", dict(tokens=tokens, context=ctx), "tokens were given but this model has no built-in"),
        ("plain", dict(tokens=tokens), "tokens were given but this model has no built-in"),
        (
            "context",
            dict(context=torch.randn(2, 5, 7)),
            "context must be of shape (2, L, 6), got shape (2, 5, 7)",
        ),
        ("context", dict(), "context must be of shape (2, L, 6), got None"),
        ("context", dict(context=torch.randn(3, 5, 6)), "got shape (3, 5, 6)"),
        ("context", dict(context=ctx, context_mask=torch.ones(2, 5)), "context_mask must be bool"),
        ("plain", dict(context=ctx), "takes no context (context_dim=None) but a context of shape (2, 5, 6)"),
        ("text", dict(), "pass tokens"),
        ("text", dict(tokens=tokens, context=ctx), "context=(2, 5, 6)"),
        ("text", dict(tokens=tokens[:1]), "tokens must have batch size 2"),
    ]


@pytest.mark.parametrize("kind, kwargs, fragment", _forward_error_cases())
def test_a_wrong_or_missing_condition_is_a_clear_error(kind, kwargs, fragment):
    net = {
        "context": context_net,
        "text": text_net,
        "plain": lambda: UNet(dims=2, in_channels=1, **TINY_UNET),
    }[kind]()
    with pytest.raises(ValueError) as err:
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), **kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(context_dim=16, text_encoder=TEXT), "context_dim=16 differs from text_encoder.width=8"),
        (dict(cross_attention_levels=(1,)), "cross_attention_levels=(1,) needs a context"),
        (dict(context_dim=6, cross_attention_levels=(2,)), "cross-attention level 2 is out of range 0..1"),
        (dict(context_dim=6, cross_attention_levels=()), "needs at least one cross-attention level"),
        (dict(context_dim=0), "context_dim must be >= 1"),
    ],
)
def test_an_inconsistent_context_configuration_is_refused(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        UNet(dims=2, in_channels=1, **{**TINY_UNET, **kwargs})
    assert fragment in str(err.value)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    plain, checkpointed = (perturbed(text_net(gradient_checkpointing=flag)).train() for flag in (False, True))
    checkpointed.load_state_dict(plain.state_dict())
    x, c_noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    tokens = plain.encode_prompts(["a handwritten seven", "the digit one"])["tokens"]
    calls = []
    for block in cross_blocks(checkpointed):
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops early
    outs, grads = [], []
    for net in (plain, checkpointed):
        out = net(x, c_noise, tokens=tokens)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({name: p.grad for name, p in net.named_parameters()})
    assert len(calls) == 2 * len(cross_blocks(checkpointed))  # each block ran again in backward
    assert torch.equal(outs[0], outs[1])
    for name, grad in grads[0].items():
        assert grad is not None and torch.allclose(grad, grads[1][name], rtol=1e-5, atol=1e-7), name
    assert grads[0]["text_encoder.token_embed.weight"][ID["seven"]].abs().sum() > 0  # the prompt learns too


# ------------------------------------------------------------------------------------------ word-level encoder


def test_tokenize_start_unknown_words_truncation_case_and_punctuation():
    enc = WordTextEncoder(vocabulary=VOCAB, width=8, num_layers=1, num_heads=2, max_length=6)
    prompts = ["A handwritten SEVEN!", "the digit, drawn", "one one one one one one one one", "", "?!"]
    tokens = enc.tokenize(prompts)
    assert tokens.dtype == torch.long and tokens.shape == (5, 6)
    assert tokens[0].tolist() == [START, ID["a"], ID["handwritten"], ID["seven"], PAD, PAD]
    assert tokens[1].tolist() == [START, ID["the"], ID["digit"], UNKNOWN, PAD, PAD]
    assert tokens[2].tolist() == [START] + [ID["one"]] * 5  # cut to max_length, the start token included
    assert tokens[3].tolist() == tokens[4].tolist() == [START] + [PAD] * 5  # the empty prompt
    assert split_words("A 7, drawn!") == ["a", "7", "drawn"]
    assert enc.encode(["a seven"])["tokens"].tolist() == [[START, ID["a"], ID["seven"], PAD, PAD, PAD]]


def test_the_encoder_masks_padding_and_follows_the_prompt_encoder_protocol():
    enc = WordTextEncoder(vocabulary=VOCAB, width=8, num_layers=1, num_heads=2, max_length=6)
    assert isinstance(enc, PromptEncoder) and enc.context_dim == 8
    tokens = enc.tokenize(["a seven", ""])
    context, mask = enc(tokens)
    assert context.shape == (2, 6, 8) and torch.isfinite(context).all()
    assert mask.tolist() == [[True, True, True, False, False, False], [True] + [False] * 5]
    for bad in (tokens.int(), torch.ones(2, 7, dtype=torch.long), tokens[0]):
        with pytest.raises(ValueError, match="tokens must be int64 of shape"):
            enc(bad)


@pytest.mark.parametrize("vocabulary", [("a", "a"), ("Seven",), ("two words",), ("a,",), ("",)])
def test_a_bad_vocabulary_is_refused(vocabulary):
    with pytest.raises(ValueError, match="vocabulary must hold distinct lower-case words or numerals"):
        WordTextEncoder(vocabulary=vocabulary)


def test_prompts_must_be_a_list_of_strings():
    enc = WordTextEncoder(vocabulary=("7", "seven"), width=8, num_heads=2)  # numerals are words too
    with pytest.raises(ValueError, match="got the string 'a seven'"):
        enc.tokenize("a seven")
    with pytest.raises(ValueError, match="a prompt must be a str, got int 7"):
        enc.tokenize(["a seven", 7])


# ------------------------------------------------------------------------------- null condition, build_condition


def test_null_condition_of_labels_tokens_and_context():
    net = text_net(num_classes=3)
    tokens = net.encode_prompts(["a seven", "the digit one"])["tokens"]
    cond = {"class_labels": torch.tensor([0, 2]), "tokens": tokens}
    null = net.null_condition(cond)
    assert null["class_labels"].tolist() == [3, 3]
    assert torch.equal(null["tokens"], net.encode_prompts(["", ""])["tokens"])  # the empty prompt
    assert torch.equal(cond["tokens"], tokens) and cond["class_labels"].tolist() == [0, 2]  # not modified

    ext = context_net()
    context = torch.randn(2, 5, 6)
    null = ext.null_condition({"context": context, "context_mask": torch.ones(2, 5, dtype=torch.bool)})
    assert torch.equal(null["context"], torch.zeros(2, 5, 6))
    assert null["context_mask"].tolist() == [[True] + [False] * 4] * 2  # one visible (zero) token
    assert torch.isfinite(ext(torch.randn(2, 1, 8, 8), torch.zeros(2), **null)).all()


class ConstantEncoder:
    """An external prompt encoder whose context is the prompt's length, everywhere (4 tokens of width 6)."""

    context_dim = 6

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        context = torch.stack([torch.full((4, 6), float(len(p))) for p in prompts])
        return {"context": context, "context_mask": torch.ones(len(prompts), 4, dtype=torch.bool)}


def test_build_condition_cycles_labels_and_prompts():
    net = text_net(num_classes=10)
    cond = build_condition(net, 5, class_labels=[3, 7], prompts=["a seven", "the digit one", "a one"],
                           encoder=net.text_encoder)  # fmt: skip
    assert cond["class_labels"].tolist() == [3, 7, 3, 7, 3]
    expected = net.encode_prompts(["a seven", "the digit one", "a one", "a seven", "the digit one"])["tokens"]
    assert torch.equal(cond["tokens"], expected)
    assert build_condition(net, 2, class_labels=4, encoder=net.text_encoder)["class_labels"].tolist() == [
        4,
        4,
    ]
    labels = build_condition(net, 3, class_labels=torch.tensor([1, 2]), encoder=net.text_encoder)
    assert labels["class_labels"].tolist() == [1, 2, 1]

    encoder = ConstantEncoder()
    assert isinstance(encoder, PromptEncoder)
    cond = build_condition(context_net(), 4, prompts=["a", "abc", "a"], encoder=encoder)
    assert cond["context"][:, 0, 0].tolist() == [1.0, 3.0, 1.0, 1.0]
    assert encoder.calls == [["a", "abc"]]  # each distinct prompt encoded once
    assert set(cond) == {"context", "context_mask"}


def test_build_condition_defaults():
    classes = UNet(dims=2, in_channels=1, num_classes=3, **TINY_UNET)
    assert build_condition(classes, 5)["class_labels"].tolist() == [0, 1, 2, 0, 1]  # every class in turn
    assert build_condition(UNet(dims=2, in_channels=1, **TINY_UNET), 3) == {}  # unconditional
    net = text_net()
    tokens = build_condition(net, 3, encoder=net.text_encoder)["tokens"]
    assert torch.equal(tokens, net.encode_prompts([""] * 3)["tokens"])  # the empty prompt
    ext = context_net()
    cond = build_condition(ext, 2, encoder=ConstantEncoder())
    assert torch.equal(cond["context"], torch.zeros(2, 4, 6))
    assert cond["context_mask"].tolist() == [[True, False, False, False]] * 2


@pytest.mark.parametrize(
    "model, kwargs, fragment",
    [
        ("classes", dict(class_labels=3), "class label 3 is out of range: the model has 3 classes (0..2)"),
        ("classes", dict(class_labels=[0, -1]), "class label -1 is out of range"),
        ("classes", dict(class_labels=True), "class labels must be integers in 0..2, got True"),
        ("classes", dict(class_labels=1.5), "class labels must be integers in 0..2, got 1.5"),
        ("classes", dict(class_labels=object), "class_labels must be one value or a sequence, got type"),
        ("classes", dict(class_labels=[]), "class_labels must not be empty"),
        ("plain", dict(class_labels=2), "this model is unconditional: class labels need a model trained"),
        (
            "classes",
            dict(prompts="a handwritten seven"),
            "not trained with text: a prompt needs a text-condi",
        ),
        ("text", dict(prompts=["a seven", 7]), "prompts must be strings, got int 7"),
        ("text", dict(prompts=[b"a seven"]), "prompts must be strings, got bytes b'a seven'"),
        ("text", dict(prompts=b"a seven"), "prompts must be strings, got bytes b'a seven'"),
    ],
)
def test_build_condition_errors_name_what_arrived(model, kwargs, fragment):
    net = {
        "classes": lambda: UNet(dims=2, in_channels=1, num_classes=3, **TINY_UNET),
        "plain": lambda: UNet(dims=2, in_channels=1, **TINY_UNET),
        "text": text_net,
    }[model]()
    with pytest.raises(ValueError) as err:
        build_condition(net, 2, encoder=net.text_encoder, **kwargs)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    if "prompts" in kwargs and model == "classes":
        assert "'a handwritten seven'" in message


# ---------------------------------------------------------------------------------------- conditioning dropout


def test_context_dropout_replaces_whole_rows_by_the_empty_prompt():
    net = text_net()
    prompts = ["a handwritten seven", "the digit one", "a one"]
    tokens = net.encode_prompts([prompts[i % 3] for i in range(2000)])["tokens"]
    empty = net.encode_prompts([""])["tokens"][0]
    cfg = TrainConfig(context_dropout=0.3)

    def drop(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return _drop_conditioning({"tokens": tokens}, cfg, gen, net.null_condition)["tokens"]

    out = drop(0)
    dropped, kept = (out == empty).all(1), (out == tokens).all(1)
    assert (dropped ^ kept).all()  # each row is either its prompt or the empty prompt, whole
    assert 0.26 < dropped.float().mean() < 0.34
    assert torch.equal(drop(0), out)  # a pure function of the generator's seed
    assert not torch.equal(drop(1), out)
    off = _drop_conditioning({"tokens": tokens}, TrainConfig(), torch.Generator(), net.null_condition)
    assert torch.equal(off["tokens"], tokens)


def test_label_and_context_dropout_are_independent_and_the_mask_goes_with_the_context():
    net = context_net(num_classes=3)
    n = 2000
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(n, 4, 6, generator=gen) + 5  # never zero
    mask = torch.ones(n, 4, dtype=torch.bool)
    mask[:, 3] = False
    labels = torch.randint(0, 3, (n,), generator=gen)
    cond = {"class_labels": labels, "context": context, "context_mask": mask}
    cfg = TrainConfig(label_dropout=0.5, context_dropout=0.5)
    out = _drop_conditioning(cond, cfg, torch.Generator().manual_seed(0), net.null_condition)
    no_context = (out["context"] == 0).flatten(1).all(1)
    assert ((out["context"] == context).flatten(1).all(1) ^ no_context).all()
    assert (out["context_mask"][no_context] == torch.tensor([True, False, False, False])).all()
    assert torch.equal(out["context_mask"][~no_context], mask[~no_context])
    no_label = out["class_labels"] == 3
    assert torch.equal(out["class_labels"][~no_label], labels[~no_label])
    for share in (no_context.float().mean(), no_label.float().mean()):
        assert 0.45 < share < 0.55
    assert 0.21 < (no_context & no_label).float().mean() < 0.29  # independent: about 0.5 * 0.5
    with pytest.raises(ValueError, match="context_dropout=0.5 needs the model's null condition"):
        _drop_conditioning({"context": context}, cfg, torch.Generator(), None)


# ---------------------------------------------------------------- a text-conditioned digits run through the CLI

TEXT_PRESET = str(Path(polyscale.__file__).parent / "presets" / "digits2d_text.yaml")
TEXT_RUN = [
    *TINY_DIGITS,
    "model.cross_attention_levels=[1]",
    "model.text_encoder.width=16",
    "model.text_encoder.num_layers=1",
    "model.text_encoder.num_heads=2",
    "model.text_encoder.max_length=8",
    "train.max_steps=2",
    "train.checkpoint_every=2",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("text") / "run"
    assert main(["train", "--preset", TEXT_PRESET, "--output-dir", str(run), *sets(*TEXT_RUN)]) == 0
    return run


def test_a_text_model_directory_records_its_vocabulary(text_run):
    saved = json.loads((text_run / "model" / "config.json").read_text())
    vocabulary = saved["config"]["text_encoder"]["vocabulary"]
    assert vocabulary == list(caption_words(None, 10)) and {"handwritten", "seven", "7"} <= set(vocabulary)
    assert saved["metadata"]["experiment"]["model"]["text_encoder"]["vocabulary"] == vocabulary
    assert "text_encoder" not in saved["metadata"]  # the built-in encoder needs no external one


def test_sample_a_prompt_with_guidance_through_the_cli(text_run, tmp_path, capsys):
    out = tmp_path / "seven.png"
    argv = ["sample", "--checkpoint", str(text_run / "model"), "--prompt", "a handwritten seven",
            "--guidance-scale", "2", "--num-samples", "2", "--timesteps", "2", "--device", "cpu",
            "--output-file", str(out)]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_prompt_reaches_the_samples(text_run):
    def draw(prompt: str) -> torch.Tensor:
        return sample_checkpoint(text_run / "model", num_samples=2, steps=2, prompts=prompt, guidance_scale=2.0,
                                 device="cpu", progress=False).samples  # fmt: skip

    seven = draw("a handwritten seven")
    assert torch.isfinite(seven).all() and seven.shape == (2, 1, 16, 16)
    assert torch.equal(draw("a handwritten seven"), seven)
    assert not torch.allclose(draw("a handwritten one"), seven, atol=1e-4)


def test_a_stochastic_sampler_samples_a_seeded_run(text_run):
    # sample_checkpoint seeds one generator per sample; a stochastic sampler draws each row's step noise from it
    out = sample_checkpoint(text_run / "model", num_samples=2, steps=2, sampler="ddpm", prompts="a handwritten seven",
                            device="cpu", progress=False).samples  # fmt: skip
    assert torch.isfinite(out).all()


@pytest.mark.long  # the reference classifier trains on the digits
def test_evaluate_a_text_model_reports_the_requested_class_row(text_run):
    rows = evaluate_checkpoint(text_run / "model", num_samples=4, steps=1, device="cpu", progress=False)
    row = next(r for r in rows if "requested class" in r.name)  # default prompts: one per class, in turn
    assert 0 <= row.model <= 1 and 0.5 < row.floor <= 1  # the floor: the classifier's held-out accuracy


def test_a_text_run_resumes_after_extending_max_steps(text_run, tmp_path):
    run = Path(shutil.copytree(text_run, tmp_path / "run"))
    cfg = load_experiment(TEXT_PRESET, [*TEXT_RUN, "train.max_steps=3"])
    assert cfg.model.text_encoder.vocabulary == ()  # filled in from the captions, as when the run started
    result = train_experiment(cfg, run)
    assert result.step == 3 and len(result.losses) == 1  # one more step, from the checkpoint of step 2


# ----------------------------------------------------------------------------------------- a CLIP-conditioned run

CLIP_RUN = [*TINY_DIGITS, "model.cross_attention_levels=[1]", "data.captions=true", "train.context_dropout=0.15",
            "train.max_steps=2", "train.checkpoint_every=2", "train.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("clip-run")
    clip = build_tiny_clip(root / "clip")
    cfg = load_experiment("digits2d", [*CLIP_RUN, f"data.text_encoder={clip}", "model.context_dim=32"])
    train_experiment(cfg, root / "run")
    return clip, root / "run" / "model"


@pytest.mark.long
def test_a_clip_model_directory_records_its_text_encoder(clip_run):
    clip, model = clip_run
    saved = json.loads((model / "config.json").read_text())
    assert saved["metadata"]["text_encoder"] == {
        "kind": "clip",
        "path": str(clip.resolve()),
        "context_dim": 32,
        "max_length": 16,
    }
    assert saved["config"]["context_dim"] == 32 and saved["config"]["text_encoder"] is None


@pytest.mark.long
def test_sample_a_clip_model_with_a_prompt(clip_run, tmp_path):
    _, model = clip_run

    def draw(prompt: str, **kwargs):
        return sample_checkpoint(model, num_samples=2, steps=2, prompts=prompt, guidance_scale=2.0, device="cpu",
                                 progress=False, **kwargs)  # fmt: skip

    out = draw("a handwritten seven", output_file=tmp_path / "seven.png")
    assert out.samples.shape == (2, 1, 16, 16) and torch.isfinite(out.samples).all()
    assert (tmp_path / "seven.png").read_bytes()[:4] == b"\x89PNG"
    assert not torch.allclose(draw("a photo of a cat").samples, out.samples, atol=1e-4)


@pytest.mark.long
def test_a_context_dim_other_than_the_clip_width_is_refused(clip_run, tmp_path):
    clip, _ = clip_run
    cfg = load_experiment("digits2d", [*CLIP_RUN, f"data.text_encoder={clip}", "model.context_dim=16"])
    with pytest.raises(ValueError) as err:
        train_experiment(cfg, tmp_path / "run")
    assert "model.context_dim=16" in str(err.value) and "set model.context_dim=32" in str(err.value)


@pytest.mark.long
def test_a_model_whose_clip_directory_is_gone_names_the_path(clip_run, tmp_path, capsys):
    clip, model = clip_run
    moved = clip.rename(clip.with_name("clip-moved"))
    try:
        argv = ["sample", "--checkpoint", str(model), "--prompt", "a handwritten seven", "--num-samples", "1",
                "--timesteps", "1", "--device", "cpu", "--output-file", str(tmp_path / "s.png")]  # fmt: skip
        code, err = run_cli(argv, capsys)
    finally:
        moved.rename(clip)
    assert code == 2
    assert str(clip.resolve()) in err and "does not exist" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- evaluate: classes


def test_requested_classes_from_prompts_and_labels():
    text, classes = load_experiment("digits2d_text"), load_experiment("digits2d_class")
    asked = requested_classes(text, 3, prompts=["a handwritten seven", "the digit 3"])
    assert asked.tolist() == [7, 3, 7]
    assert requested_classes(text, 2, prompts="an image of the number eight").tolist() == [8, 8]
    assert requested_classes(text, 2, prompts=["a 3 or a 7"]) is None  # two digits: no single class
    assert requested_classes(text, 2, prompts=["a handwritten seven", "a cat"]) is None  # one names none
    assert requested_classes(text, 2) is None  # no prompt: nothing asked
    assert requested_classes(classes, 12).tolist() == [*range(10), 0, 1]  # every class in turn
    assert requested_classes(classes, 3, class_labels=4).tolist() == [4, 4, 4]
    assert requested_classes(classes, 3, class_labels=[1, 2]).tolist() == [1, 2, 1]


class FirstValueClassifier:
    """Predicts the class written in a sample's first value: a classifier whose answers the test knows."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.flatten(1)[:, 0].round().long(), 3).float()


def test_requested_class_row_beside_the_classifiers_accuracy_on_real_data():
    def data(first_values):
        x = torch.zeros(len(first_values), 1, 4, 4)
        x[:, 0, 0, 0] = torch.tensor(first_values, dtype=torch.float32)
        return x

    test_x, test_y = data([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0])  # 3 of 4 classified right
    fake, asked = data([1, 1, 0, 0]), torch.tensor([1, 2, 2, 0])  # 2 of 4 as asked
    row = requested_class_row(fake, asked, test_x, test_y, FirstValueClassifier())
    assert row.model == 0.5 and row.floor == 0.75
    assert "requested class" in row.name
    assert torch.isnan(
        torch.tensor(requested_class_row(fake, asked, test_x, None, FirstValueClassifier()).floor)
    )
