"""Hardening of the encodings: no stale tables across weight changes, half precision with padding, option checks."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import CONFIGS, token_ids

import hf_posenc
from hf_posenc.option_checks import check_bool, check_choice, check_finite_float, check_int, check_optional_int

LEARNED_RELATIVE = sorted(n for n, c in hf_posenc.ENCODINGS.items() if c.kind == "relative" and c.learned)


def _bert(encoding: str | None, seed: int = 0, **options) -> torch.nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(CONFIGS["bert"]()).eval()
    if encoding is not None:
        hf_posenc.patch_model(model, encoding, **options)
    return model


def _posenc_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if ".posenc." in name]


def _fresh_copy(model: torch.nn.Module, encoding: str) -> torch.nn.Module:
    """The same weights in a newly patched model: nothing computed by an earlier forward pass can leak into it."""
    parameter = next(model.parameters())
    fresh = _bert(encoding, seed=1).to(parameter.dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


def _inputs():
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    return {"input_ids": token_ids(2, 12), "attention_mask": mask}


def _logits(model: torch.nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.double()


def _last_hidden(model: torch.nn.Module, inputs) -> torch.Tensor:
    """The last hidden states, of order one (LayerNorm), where a small change of a table shows above 1e-6; the tiny
    model's logits are of order 1e-2."""
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[-1].double()


def _scale_by_data(model):
    for parameter in _posenc_parameters(model):
        parameter.data.mul_(5)  # `.data` edits do not bump the tensor version


def _scale_in_place(model):
    with torch.no_grad():
        for parameter in _posenc_parameters(model):
            parameter.mul_(5)


def _load_scaled_state(model):
    state = {k: v * 5 if ".posenc." in k else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)


def _fused_adamw_step(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)  # the HF Trainer's default
    model.train()
    inputs = _inputs()
    loss = torch.nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    model.eval()


def _half_round_trip(model):
    # Rounds the encoding's weights (only, so that the rounding of the rest cannot hide a stale table); the same
    # tensors with the same version and dtype afterwards.
    for module in {id(m): m for name, m in model.named_modules() if name.endswith(".posenc")}.values():
        module.to(torch.bfloat16).to(torch.float32)


def _to_float64(model):
    model.to(torch.float64)


WEIGHT_CHANGES = {
    "data_edit": _scale_by_data,
    "no_grad_in_place": _scale_in_place,
    "load_state_dict": _load_scaled_state,
    "fused_adamw": _fused_adamw_step,
    "bf16_round_trip": _half_round_trip,
    "to_float64": _to_float64,
}


@pytest.mark.parametrize("change", sorted(WEIGHT_CHANGES))
@pytest.mark.parametrize("encoding", LEARNED_RELATIVE)
def test_outputs_follow_every_kind_of_weight_change(encoding, change):
    model, inputs = _bert(encoding), _inputs()
    with torch.no_grad():  # weights large enough that a bf16 rounding moves the logits visibly
        for parameter in _posenc_parameters(model):
            parameter.normal_(0.0, 1.0)
    before = _last_hidden(model, inputs)
    _last_hidden(model, inputs)  # a second pass: anything kept across passes is in use now
    WEIGHT_CHANGES[change](model)
    after, expected = _last_hidden(model, inputs), _last_hidden(_fresh_copy(model, encoding), inputs)
    if change != "to_float64":  # a widening cast keeps every value
        assert not torch.allclose(before, expected, atol=1e-8), "the change must move the outputs for the test to bite"
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)


def test_t5_data_edit_of_the_issue():
    model, inputs = _bert("t5"), _inputs()
    first = _logits(model, inputs)
    model.bert.encoder.posenc.relative_attention_bias.weight.data.mul_(5)
    assert not torch.equal(first, _logits(model, inputs))


@pytest.mark.parametrize("encoding", LEARNED_RELATIVE)
def test_fused_adamw_training_then_save_and_load_gives_the_same_logits(encoding, tmp_path):
    model, inputs = _bert(encoding), _inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    labels = torch.tensor([0, 1])
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(**inputs).logits, labels).backward()
        optimizer.step()
    model.eval()
    trained = _logits(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = hf_posenc.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(loaded, inputs), trained, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Half precision with padding
# ---------------------------------------------------------------------------------------------------------------------

ENCODER_ENCODINGS = sorted(n for n, c in hf_posenc.ENCODINGS.items() if c.kind != "none")


@pytest.mark.parametrize("mode", ["bf16_autocast", "bf16_model"])
@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
def test_half_precision_with_right_padding_is_finite(encoding, mode):
    model, inputs = _bert(encoding), _inputs()
    if mode == "bf16_model":
        model.to(torch.bfloat16)
        logits = _logits(model, inputs)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = _logits(model, inputs)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("encoding", ["nezha", "relative_key", "relative_key_query", "t5"])
def test_bf16_autocast_training_step_with_padding_is_finite(encoding):
    """The blockwise backward recomputes the probabilities: its mask fill must fit the autocast dtype too."""
    model, inputs = _bert(encoding), _inputs()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs).logits.float().sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_bart_bf16_autocast_with_padding_is_finite():
    from transformers import BartForConditionalGeneration

    for encoder, decoder in [("nezha", "none"), ("t5", "rope"), ("relative_key_query", "alibi")]:
        torch.manual_seed(0)
        model = BartForConditionalGeneration(CONFIGS["bart"]()).eval()
        hf_posenc.patch_model(model, encoder=encoder, decoder=decoder)
        inputs = _inputs()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**inputs, decoder_input_ids=token_ids(2, 5, seed=1)).logits
        assert torch.isfinite(logits).all(), (encoder, decoder)


# ---------------------------------------------------------------------------------------------------------------------
# Option checks
# ---------------------------------------------------------------------------------------------------------------------

REFUSED = [
    ("alibi", {"slope_scale": math.inf}, "slope_scale", ValueError),
    ("alibi", {"slope_scale": math.nan}, "slope_scale", ValueError),
    ("alibi", {"slope_scale": True}, "slope_scale", TypeError),
    ("alibi", {"slope_scale": "1.0"}, "slope_scale", TypeError),
    ("rope", {"base": math.inf}, "base", ValueError),
    ("rope", {"base": math.nan}, "base", ValueError),
    ("rope", {"factor": math.inf, "scaling": "linear"}, "factor", ValueError),
    ("rope", {"factor": math.nan}, "factor", ValueError),
    ("rope", {"scaling": "yarn", "factor": 2.0, "original_max_length": -5}, "original_max_length", ValueError),
    ("rope", {"scaling": "yarn", "factor": 2.0, "original_max_length": 0}, "original_max_length", ValueError),
    ("rope", {"original_max_length": 64.0}, "original_max_length", TypeError),
    ("rope", {"scaling": True}, "scaling", TypeError),
    ("sinusoidal", {"base": "10000"}, "base", TypeError),
    ("sinusoidal", {"base": math.inf}, "base", ValueError),
    ("sinusoidal", {"scale": math.nan}, "scale", ValueError),
    ("sinusoidal", {"scale": "big"}, "scale", TypeError),
    ("t5", {"max_distance": True}, "max_distance", TypeError),
    ("t5", {"num_buckets": 32.0}, "num_buckets", TypeError),
    ("t5", {"init": None}, "init", TypeError),
    ("relative_key", {"max_distance": True}, "max_distance", TypeError),
    ("relative_key_query", {"max_distance": 2.5}, "max_distance", TypeError),
    ("nezha", {"max_distance": False}, "max_distance", TypeError),
    ("nezha", {"max_distance": -1}, "max_distance", ValueError),
    ("nezha", {"max_distance": 2**70}, "max_distance", ValueError),  # overflowed torch's sizes
    ("relative_key", {"max_distance": 2**70}, "max_distance", ValueError),
    ("t5", {"num_buckets": 2**70, "max_distance": 2**71}, "num_buckets", ValueError),
    ("rope", {"scaling": "yarn", "factor": 2.0, "original_max_length": 10**400}, "original_max_length", ValueError),
    ("learned", {"group_size": 2**70, "position_ids": "grouped", "max_length": 128}, "group_size", ValueError),
    ("rope", {"scaling": "ntk", "factor": 1e200}, "factor", ValueError),  # NTK's power of it overflowed a float
    ("learned", {"group_size": True, "position_ids": "grouped", "max_length": 128}, "group_size", TypeError),
    ("learned", {"init": 0}, "init", TypeError),
    ("alibi", {"keep_absolute": "yes"}, "keep_absolute", TypeError),
    ("t5", {"keep_absolute": 1}, "keep_absolute", TypeError),
]


@pytest.mark.parametrize("encoding,options,option,error", REFUSED)
def test_bad_option_values_are_refused_by_name(encoding, options, option, error):
    model = _bert(None)
    state, config = {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict()
    with pytest.raises(error) as raised:
        hf_posenc.patch_model(model, encoding, **options)
    message = str(raised.value)
    assert f"{option} must be" in message and repr(encoding) in message and f"got {options[option]!r}" in message
    assert model.config.to_dict() == config and getattr(model.config, "posenc", None) is None
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_keep_absolute_in_a_per_stack_request_is_checked_too():
    model = _bert(None)
    with pytest.raises(TypeError, match="keep_absolute must be True or False"):
        hf_posenc.patch_model(model, encoder={"encoding": "alibi", "keep_absolute": "no"})
    assert getattr(model.config, "posenc", None) is None


def test_yarn_with_valid_options_is_finite():
    model = _bert("rope", scaling="yarn", factor=4.0, original_max_length=1)
    assert torch.isfinite(_logits(model, _inputs())).all()


def test_option_check_helpers():
    assert check_int("e", "n", 3, low=1) == 3
    assert check_optional_int("e", "n", None, low=1) is None
    assert check_finite_float("e", "x", 2) == 2.0 and type(check_finite_float("e", "x", 2)) is float
    assert check_bool("e", "b", False) is False
    assert check_choice("e", "c", None, ("a",), optional=True) is None
    with pytest.raises(TypeError, match=r"Encoding 'e': n must be an int >= 1, got True of type bool\."):
        check_int("e", "n", True, low=1)
    with pytest.raises(ValueError, match=r"n must be an int >= 1 or None, got 0\."):
        check_optional_int("e", "n", 0, low=1)
    with pytest.raises(ValueError, match=r"x must be > 0 and <= 10 \(a finite number\), got 0"):
        check_finite_float("e", "x", 0, low=0, high=10, low_open=True)
    with pytest.raises(ValueError, match="finite"):
        check_finite_float("e", "x", 10**400)
    with pytest.raises(ValueError, match=r"c must be one of \('a', 'b'\), got 'z'"):
        check_choice("e", "c", "z", ("a", "b"))
    with pytest.raises(TypeError, match="got 1 of type int"):
        check_choice("e", "c", 1, (True, False))
