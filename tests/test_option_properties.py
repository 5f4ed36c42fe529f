"""Property-based tests of every registered encoding's option schema (hypothesis).

For drawn option sets, valid and invalid alike: an accepted set gives finite outputs on tiny BERT and BART models; a
refused one raises `TypeError` or `ValueError` and leaves the model exactly as it was. The drawn values need no
knowledge of which are valid, so a newly registered encoding is covered by its schema alone.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import CONFIGS, token_ids

import hf_posenc
from hf_posenc.encodings import option_defaults

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# Values of the wrong type or out of any range, for every option.
JUNK = st.one_of(
    st.booleans(),
    st.none(),
    st.sampled_from(["", "yes", "auto", "10000", "linear", "zeros", "copy", "grouped"]),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -1e300, 1e-300, 0.0, -1.0, 2**70]),
    st.integers(-5, 5),
    st.lists(st.integers(0, 3), max_size=1),
)

# Plausible values by the kind of the default: most draws of these are accepted, so both outcomes are exercised.
PLAUSIBLE_INT = st.integers(-2, 160)
PLAUSIBLE_FLOAT = st.one_of(st.floats(-2.0, 2e4), st.floats(1.0, 1e13), st.integers(-2, 600))
CHOICES = ["auto", "normal", "zeros", "copy", "interpolate", "sinusoidal", "random", "recurrent", "grouped"]
PLAUSIBLE_CHOICE = st.one_of(st.sampled_from(CHOICES + ["linear", "ntk", "yarn", "bogus"]), st.none())

# Options whose default says nothing about their kind (None, or "auto" for a number).
KIND_OF = {"group_size": "int", "original_max_length": "int", "max_distance": "int", "scale": "float"}


def _plausible(name: str, default):
    kind = KIND_OF.get(name)
    if kind is None:
        if isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int):
            kind = "int"
        elif isinstance(default, float):
            kind = "float"
        else:
            kind = "choice"
    plausible = {"int": PLAUSIBLE_INT, "float": PLAUSIBLE_FLOAT, "bool": st.booleans(), "choice": PLAUSIBLE_CHOICE}
    return st.one_of(plausible[kind], st.just(default))


def option_sets(encoding: str):
    """Any subset of the encoding's options, plus keep_absolute (and max_length for `learned`, whose position maps
    need it): half the sets of plausible values only (mostly accepted), half with junk anywhere (mostly refused)."""
    schema = option_defaults(hf_posenc.ENCODINGS[encoding])
    plausible = {name: _plausible(name, default) for name, default in schema.items()}
    plausible["keep_absolute"] = st.booleans()
    if encoding == "learned":
        plausible["max_length"] = st.sampled_from([128, 96])
    anything = {name: st.one_of(strategy, JUNK) for name, strategy in plausible.items()}
    return st.one_of(st.fixed_dictionaries({}, optional=plausible), st.fixed_dictionaries({}, optional=anything))


def _snapshot(model: torch.nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        model.config.to_dict(),
        model.config._attn_implementation,
        repr(model),
    )


def _assert_unchanged(model: torch.nn.Module, snapshot) -> None:
    state, config, implementation, structure = snapshot
    assert getattr(model.config, "posenc", None) is None
    assert model.config.to_dict() == config
    assert model.config._attn_implementation == implementation
    assert repr(model) == structure
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(state[k], now[k]) for k in state)


def _inputs():
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    return {"input_ids": token_ids(2, 12), "attention_mask": mask}


def _check_property(pristine: torch.nn.Module, patch, forward, options: dict, outcomes: dict) -> None:
    model = copy.deepcopy(pristine)
    snapshot = _snapshot(model)
    try:
        patch(model, dict(options))
    except (TypeError, ValueError):
        outcomes["refused"] += 1
        _assert_unchanged(model, snapshot)
        return
    outcomes["accepted"] += 1
    with torch.no_grad():
        output = forward(model)
    assert torch.isfinite(output).all(), options


@pytest.mark.parametrize("encoding", sorted(hf_posenc.ENCODINGS))
def test_bert_options_accepted_run_finite_refused_change_nothing(encoding):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    pristine = BertForSequenceClassification(CONFIGS["bert"]()).eval()
    inputs, outcomes = _inputs(), {"accepted": 0, "refused": 0}

    @SETTINGS
    @given(options=option_sets(encoding))
    def check(options):
        patch = lambda model, opts: hf_posenc.patch_model(model, encoding, **opts)  # noqa: E731
        _check_property(pristine, patch, lambda model: model(**inputs).logits, options, outcomes)

    check()
    assert outcomes["refused"] > 0
    if hf_posenc.ENCODINGS[encoding].kind != "none":  # `none` is for causal decoders only
        assert outcomes["accepted"] > 0


@pytest.mark.parametrize("encoding", sorted(hf_posenc.ENCODINGS))
def test_bart_options_accepted_run_finite_refused_change_nothing(encoding):
    from transformers import BartForConditionalGeneration

    torch.manual_seed(0)
    pristine = BartForConditionalGeneration(CONFIGS["bart"]()).eval()
    inputs, outcomes = _inputs(), {"accepted": 0, "refused": 0}
    decoder_ids = token_ids(2, 7, seed=1)

    def patch(model, options):
        if hf_posenc.ENCODINGS[encoding].kind == "none":  # the decoder only; the encoder keeps its table
            max_length = options.pop("max_length", None)
            request = {"encoding": encoding, **options}
            extra = {} if max_length is None else {"max_length": max_length}
            hf_posenc.patch_model(model, decoder=request, **extra)
        else:  # both stacks: the bidirectional encoder and the causal decoder
            hf_posenc.patch_model(model, encoding, **options)

    @SETTINGS
    @given(options=option_sets(encoding))
    def check(options):
        forward = lambda model: model(**inputs, decoder_input_ids=decoder_ids).logits  # noqa: E731
        _check_property(pristine, patch, forward, options, outcomes)

    check()
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0
