"""Local + global attention (`patch_model(..., attention_window=N)`, Longformer-style): the band pattern, exact
equality with full attention when the window covers the input, locality in the full models, the record, validation."""

from __future__ import annotations

import copy

import pytest
import torch

import hf_posenc
from hf_posenc import ENCODINGS, patch_model, patch_spec
from hf_posenc.attention import attach, posenc_attention_forward
from hf_posenc.encodings import AttentionOptions, PositionContext, StackDims, build_encoding
from tests.tiny_models import tiny_model, token_ids

ENCODER_ENCODINGS = [e for e in sorted(ENCODINGS) if e != "none"]


def test_band_pattern_by_hand():
    band = AttentionOptions(window=4, global_tokens=(0,)).band(6, 6, torch.device("cpu"))
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],  # CLS attends to all
            [1, 1, 1, 1, 0, 0],  # |i - j| <= 2, and CLS
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 0, 1, 1, 1, 1],
            [1, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(band, expected)


def test_global_stride_and_no_global_tokens():
    band = AttentionOptions(window=2, global_tokens=(), global_stride=3).band(7, 7, torch.device("cpu"))
    rows = ["".join("x" if b else "." for b in row) for row in band.tolist()]
    assert rows == [
        "xxxxxxx",  # 0 is global through the stride
        "xxxx..x",  # 1: its neighbours 0..2 and the global 0, 3, 6
        "xxxx..x",
        "xxxxxxx",  # 3
        "x..xxxx",
        "x..xxxx",
        "xxxxxxx",  # 6
    ]


def test_band_of_cached_queries_is_bottom_right_aligned():
    full = AttentionOptions(window=4, global_tokens=()).band(10, 10, torch.device("cpu"))
    assert torch.equal(AttentionOptions(window=4, global_tokens=()).band(3, 10, torch.device("cpu")), full[-3:])


def _module(encoding, options: AttentionOptions, causal: bool = False) -> torch.nn.Module:
    module = torch.nn.Module()
    module.is_causal = causal
    attach(module, encoding, PositionContext(causal, options))
    return module


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("encoding", [None, "alibi", "t5", "relative_key", "rope"])
def test_backend_equals_sdpa_with_the_band_mask(encoding, causal):
    torch.manual_seed(0)
    dims = StackDims(32, 4, 8, causal, 64)
    built = None if encoding is None else build_encoding(encoding, dims, {})
    options = AttentionOptions(window=6, global_tokens=(0, 5))
    q, k, v = (torch.randn(2, 4, 20, 8) for _ in range(3))
    padding = torch.ones(2, 1, 20, 20, dtype=torch.bool)
    padding[1, ..., 15:] = False
    got, _ = posenc_attention_forward(_module(built, options, causal), q, k, v, padding, scaling=8**-0.5)
    allowed = padding & options.band(20, 20, q.device)
    if causal:
        allowed = allowed & torch.ones(20, 20, dtype=torch.bool).tril()
    reference, _ = posenc_attention_forward(
        _module(built, AttentionOptions(), causal), q, k, v, allowed, scaling=8**-0.5
    )
    torch.testing.assert_close(got, reference, atol=1e-6, rtol=0)
    full, _ = posenc_attention_forward(_module(built, AttentionOptions(), causal), q, k, v, padding, scaling=8**-0.5)
    assert not torch.allclose(got, full, atol=1e-3)


def _output(model, ids, mask=None):
    with torch.no_grad():
        if model.config.model_type == "bart":
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).last_hidden_state
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("model_type", ["bert", "bart"])
@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
def test_a_window_that_covers_the_input_is_exactly_full_attention(model_type, encoding):
    full = patch_model(tiny_model(model_type), encoding, attention_scale="log")  # learned: in the posenc backend
    local = patch_model(tiny_model(model_type), encoding, attention_scale="log", attention_window=62)
    ids = token_ids(2, 32)
    assert torch.equal(_output(full, ids), _output(local, ids))


@pytest.mark.parametrize("encoding", ["learned", "alibi", "t5", "relative_key", "rope"])
def test_tokens_outside_the_receptive_field_have_no_effect(encoding):
    """Two layers with window 4 (2 each side) and no global token: token 20 reaches tokens 16..24 only."""
    model = patch_model(tiny_model("bert"), encoding, attention_window=4, global_tokens=())
    ids = token_ids(1, 32)
    changed = ids.clone()
    changed[0, 20] = 7
    before, after = _output(model, ids), _output(model, changed)
    assert torch.equal(before[:, :16], after[:, :16]) and torch.equal(before[:, 25:], after[:, 25:])
    assert not torch.allclose(before[:, 17:24], after[:, 17:24], atol=1e-5)
    full = patch_model(tiny_model("bert"), encoding, attention_scale="log", attention_scale_length=64)
    assert not torch.allclose(_output(full, ids)[:, :16], _output(full, changed)[:, :16], atol=1e-6)


def test_a_global_cls_sees_everything():
    model = patch_model(tiny_model("bert"), "alibi", attention_window=4)
    ids = token_ids(1, 32)
    changed = ids.clone()
    changed[0, 30] = 7
    before, after = _output(model, ids), _output(model, changed)
    assert not torch.allclose(before[:, 0], after[:, 0], atol=1e-6)  # CLS reads token 30
    assert not torch.equal(before[:, 5], after[:, 5])  # token 5 reads CLS in layer 2
    local = patch_model(tiny_model("bert"), "alibi", attention_window=4, global_tokens=())
    assert torch.equal(_output(local, ids)[:, 5], _output(local, changed)[:, 5])  # without it, nothing reaches 5


def test_decoder_stays_causal_with_a_window():
    model = patch_model(tiny_model("bart"), "rope", attention_window=4)
    ids = token_ids(1, 24)
    changed = ids.clone()
    changed[0, 20] = 7
    with torch.no_grad():
        outputs = [model(input_ids=ids, decoder_input_ids=d).last_hidden_state for d in (ids, changed)]
    assert torch.equal(outputs[0][:, :20], outputs[1][:, :20])


@pytest.mark.parametrize("encoding", ["alibi", "relative_key", "nezha"])
def test_padding_with_a_window_stays_finite_and_matches_the_unpadded_tokens(encoding):
    model = patch_model(tiny_model("bert"), encoding, attention_window=4)
    ids = token_ids(2, 40)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 20:] = 0  # padded queries past 22 see no key in their window
    padded = _output(model, ids, mask)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[1:, :20], _output(model, ids[1:, :20]), atol=1e-5, rtol=0)


def test_the_blockwise_path_takes_the_window_in_training():
    model = patch_model(tiny_model("bert"), "relative_key", attention_window=6)
    ids = token_ids(2, 48)
    inference = _output(model, ids)
    trained = model.train()(input_ids=ids).last_hidden_state  # grad on: the blockwise path
    torch.testing.assert_close(trained, inference, atol=1e-5, rtol=0)
    trained.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_local_mask_is_built_once_per_forward(monkeypatch):
    calls = []
    band = AttentionOptions.band

    def counting(self, *args):
        calls.append(args)
        return band(self, *args)

    monkeypatch.setattr(AttentionOptions, "band", counting)
    model = patch_model(tiny_model("bert"), "alibi", attention_window=8)
    _output(model, token_ids(2, 32))
    assert len(calls) == 1  # two layers share it


@pytest.mark.parametrize("model_type", ["bert", "bart"])
def test_save_and_reload_keep_the_window(tmp_path, model_type):
    model = patch_model(tiny_model(model_type), "t5", attention_window=8, global_tokens=(0, 3), global_stride=16)
    entry = patch_spec(model)["stacks"]["encoder"]
    assert entry["attention_window"] == 8 and entry["global_tokens"] == [0, 3] and entry["global_stride"] == 16
    model.save_pretrained(tmp_path)
    loaded = hf_posenc.from_pretrained(tmp_path)
    assert patch_spec(loaded) == patch_spec(model)
    ids = token_ids(2, 40)
    assert torch.equal(_output(model, ids), _output(loaded, ids))


def test_a_window_up_to_a_new_max_length_is_accepted():
    model = patch_model(tiny_model("bert"), "alibi", max_length=256, attention_window=200)
    assert patch_spec(model)["stacks"]["encoder"]["attention_window"] == 200


def _snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, model.config.to_dict(), model.config._attn_implementation


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(attention_window=0), ValueError, "attention_window must be an int >= 1"),
        (dict(attention_window=-4), ValueError, "attention_window must be an int >= 1"),
        (dict(attention_window=8.0), TypeError, "attention_window must be an int"),
        (dict(attention_window=True), TypeError, "attention_window must be an int"),
        (dict(attention_window=65), ValueError, "larger than the input limit 64"),
        (dict(global_tokens=(0, 1)), ValueError, "pass attention_window too"),
        (dict(global_stride=8), ValueError, "pass attention_window too"),
        (dict(attention_window=8, global_tokens=(-1,)), ValueError, "global_tokens must be a tuple of token indices"),
        (dict(attention_window=8, global_tokens=0), ValueError, "global_tokens must be a tuple"),
        (dict(attention_window=8, global_stride=0), ValueError, "global_stride must be an int >= 1"),
    ],
)
@pytest.mark.parametrize("model_type, encoding", [("bert", "alibi"), ("bert", "learned"), ("bart", "rope")])
def test_bad_window_options_leave_the_model_unchanged(model_type, encoding, kwargs, error, words):
    model = tiny_model(model_type)
    state, config, implementation = _snapshot(model)
    with pytest.raises(error) as raised:
        patch_model(model, encoding, **kwargs)
    assert words in str(raised.value)
    now = model.state_dict()
    assert state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
    assert model.config.to_dict() == config and model.config._attn_implementation == implementation


def test_a_per_stack_request_carries_its_own_window():
    model = patch_model(
        tiny_model("bart"), encoder={"encoding": "alibi", "attention_window": 8}, decoder={"encoding": "rope"}
    )
    stacks = patch_spec(model)["stacks"]
    assert stacks["encoder"]["attention_window"] == 8 and "attention_window" not in stacks["decoder"]
    copy.deepcopy(model)  # the hooks and contexts survive a copy
