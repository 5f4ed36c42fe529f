"""Log attention scaling (`patch_model(..., attention_scale="log")`): exact no-op at or below the reference length,
`log(L) / log(reference)` on the scores past it, through SDPA's own `scale`, recorded and reloaded."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import hf_posenc
from hf_posenc import ENCODINGS, patch_model, patch_spec
from hf_posenc.attention import attach, key_counts, posenc_attention_forward
from hf_posenc.encodings import AttentionOptions, PositionContext
from tests.tiny_models import MAX_POSITIONS, tiny_model, token_ids

ENCODER_ENCODINGS = [e for e in sorted(ENCODINGS) if e != "none"]


def _module(options: AttentionOptions, causal: bool = False) -> torch.nn.Module:
    module = torch.nn.Module()
    module.is_causal = causal
    attach(module, None, PositionContext(causal, options))
    return module


def _qkv(length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, length, 8, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("length", [8, 16, 40, 100])
def test_backend_sharpens_scores_by_log_length_over_log_reference(length):
    q, k, v = _qkv(length)
    out, _ = posenc_attention_forward(_module(AttentionOptions("log", 16)), q, k, v, None, scaling=8**-0.5)
    factor = math.log(length) / math.log(16) if length > 16 else 1.0
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=8**-0.5 * factor)
    torch.testing.assert_close(out.transpose(1, 2), expected, atol=1e-6, rtol=0)
    if length > 16:  # and that is not the unscaled attention
        assert not torch.allclose(expected, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-3)


def test_scaling_goes_to_sdpa_as_its_scale(monkeypatch):
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = patch_model(tiny_model("bert"), "alibi", attention_scale="log", attention_scale_length=16)
    with torch.no_grad():
        model(input_ids=token_ids(1, 32))
    assert seen and all(s == pytest.approx(8**-0.5 * math.log(32) / math.log(16)) for s in seen)


def _plain_and_scaled(model_type: str, encoding: str, **scale):
    plain = tiny_model(model_type)
    if encoding != "learned":
        patch_model(plain, encoding)
    scaled = patch_model(copy.deepcopy(tiny_model(model_type)), encoding, attention_scale="log", **scale)
    return plain, scaled


def _encoder_output(model, ids):
    with torch.no_grad():
        if model.config.model_type == "bart":
            return model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("model_type", ["bert", "bart"])
@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
def test_exact_no_op_at_or_below_the_reference_and_a_change_past_it(model_type, encoding):
    plain, scaled = _plain_and_scaled(model_type, encoding, attention_scale_length=16)
    assert scaled.config._attn_implementation == "posenc"  # learned too: the scale lives in the posenc backend
    for length in (5, 16):
        ids = token_ids(2, length)
        assert torch.equal(_encoder_output(plain, ids), _encoder_output(scaled, ids))
    ids = token_ids(2, 40)  # the tiny models' scores are small (init std 0.02), and so is the change
    assert float((_encoder_output(plain, ids) - _encoder_output(scaled, ids)).abs().max()) > 1e-5


def test_reference_defaults_to_the_original_table_size_and_is_recorded():
    model = patch_model(tiny_model("bart"), "rope", attention_scale="log", max_length=256)
    for stack in ("encoder", "decoder"):
        entry = patch_spec(model)["stacks"][stack]
        assert entry["attention_scale"] == "log" and entry["attention_scale_length"] == MAX_POSITIONS


def test_unscaled_patches_write_the_record_as_before():
    entry = patch_spec(patch_model(tiny_model("bert"), "alibi"))["stacks"]["encoder"]
    assert set(entry) == {"encoding", "options", "keep_absolute"}


@pytest.mark.parametrize("encoding", ["alibi", "learned"])
def test_save_and_reload_keep_the_scale(tmp_path, encoding):
    model = patch_model(tiny_model("bert"), encoding, attention_scale="log", attention_scale_length=20)
    model.save_pretrained(tmp_path)
    loaded = hf_posenc.from_pretrained(tmp_path)
    assert patch_spec(loaded) == patch_spec(model)
    ids = token_ids(2, 50)
    assert torch.equal(_encoder_output(model, ids), _encoder_output(loaded, ids))


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        model.config.to_dict(),
        model.config._attn_implementation,
    )


def _assert_unchanged(model, snapshot):
    state, config, implementation = snapshot
    now = model.state_dict()
    assert state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
    assert model.config.to_dict() == config and model.config._attn_implementation == implementation


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(attention_scale="linear"), ValueError, "attention_scale must be None or 'log'"),
        (dict(attention_scale=True), ValueError, "attention_scale must be None or 'log'"),
        (
            dict(attention_scale="log", attention_scale_length=0),
            ValueError,
            "attention_scale_length must be an int >= 2",
        ),
        (dict(attention_scale="log", attention_scale_length=-8), ValueError, "int >= 2"),
        (dict(attention_scale="log", attention_scale_length=1), ValueError, "int >= 2"),
        (
            dict(attention_scale="log", attention_scale_length=128.0),
            TypeError,
            "attention_scale_length must be an int",
        ),
        (dict(attention_scale="log", attention_scale_length=True), TypeError, "must be an int"),
        (dict(attention_scale_length=128), ValueError, "needs attention_scale='log'"),
    ],
)
@pytest.mark.parametrize("encoding", ["alibi", "learned"])
def test_bad_scale_options_leave_the_model_unchanged(encoding, kwargs, error, words):
    model = tiny_model("bert")
    snapshot = _snapshot(model)
    with pytest.raises(error) as raised:
        patch_model(model, encoding, **kwargs)
    assert words in str(raised.value)
    _assert_unchanged(model, snapshot)


def _hidden(model, ids, mask=None):
    with torch.no_grad():
        if model.config.model_type == "bart":
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids, decoder_attention_mask=mask)
        return model(input_ids=ids, attention_mask=mask)


def _sharpened(model):
    """Query and key weights x20: the tiny models' scores (init std 0.02) are too small for the factor to show."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("query.weight", "key.weight", "q_proj.weight", "k_proj.weight")):
                parameter.mul_(20)
    return model


def _short_padded_beside_long():
    short, long = token_ids(1, 24), token_ids(1, 48)
    padded = torch.cat([short, torch.ones(1, 24, dtype=short.dtype)], dim=1)
    return short, long, torch.cat([padded, long]), torch.tensor([[1] * 24 + [0] * 24, [1] * 48])


@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
def test_an_inputs_factor_is_its_own_length_whatever_it_is_batched_with(encoding):
    """`L` is each input's own length: a 24-token input padded to 48 beside a 48-token one gives what it gives alone
    (the fused path and the blockwise one). The factor of the batch's longest input (the behaviour before) is 1e-3
    off here (measured: 2.7e-3 to 2.3e-2 over the encodings)."""
    model = _sharpened(patch_model(tiny_model("bert"), encoding, attention_scale="log", attention_scale_length=16))
    short, long, batch, mask = _short_padded_beside_long()
    batched = _hidden(model, batch, mask).last_hidden_state
    torch.testing.assert_close(batched[0, :24], _hidden(model, short).last_hidden_state[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1], _hidden(model, long).last_hidden_state[0], atol=1e-5, rtol=0)


def test_a_bart_decoder_input_takes_its_own_length_too():
    """Causal self-attention: the key count of a padded decoder input is its own (the last query row's keys)."""
    model = _sharpened(patch_model(tiny_model("bart"), "t5", attention_scale="log", attention_scale_length=16))
    short, _, batch, mask = _short_padded_beside_long()
    batched = _hidden(model, batch, mask).last_hidden_state[0, :24]
    torch.testing.assert_close(batched, _hidden(model, short).last_hidden_state[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("additive", [False, True])
def test_key_counts_read_each_inputs_keys_off_the_mask(additive):
    padding = torch.tensor([[1] * 5 + [0] * 3, [1] * 8, [1] * 2 + [0] * 6], dtype=torch.bool)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    for mask in (padding[:, None, None, :].expand(3, 1, 8, 8), padding[:, None, None, :] & causal):
        if additive:
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        assert key_counts(mask).tolist() == [5, 8, 2]


def test_scale_factors_are_one_up_to_the_reference_and_log_ratios_past_it():
    options = AttentionOptions("log", 16)
    factors = options.scale_factors(torch.tensor([1, 16, 17, 256]))
    assert factors.dtype == torch.float32 and factors[:2].tolist() == [1.0, 1.0]
    torch.testing.assert_close(factors[2:], torch.tensor([math.log(17) / math.log(16), 2.0]), atol=1e-7, rtol=0)
    assert [options.scale_factor(n) for n in (16, 256)] == [1.0, 2.0]
