"""The matrix: every architecture x every encoding on tiny local models, plus the behaviour of `patch_model`."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import transformers as tf
from tiny_models import CONFIGS, HEADS, MAX_POSITIONS, SEQ2SEQ, hidden, tiny_model, token_ids

import hf_posenc
from hf_posenc.encodings import ENCODINGS

ARCHS = sorted(CONFIGS)
ENCODER_ENCODINGS = sorted(n for n, c in ENCODINGS.items() if c.kind != "none")
UNBOUNDED = sorted(n for n in ENCODER_ENCODINGS if not ENCODINGS[n].max_length_bound)
RELATIVE = sorted(n for n, c in ENCODINGS.items() if c.kind == "relative")
ATOL = 1e-5  # fp32 on CPU: different but equivalent kernel paths (e.g. SDPA with a float vs a bool mask)


def patched(arch: str, encoding: str, head: str | None = None, **options) -> torch.nn.Module:
    model = tiny_model(arch, head)
    if arch in SEQ2SEQ:
        return hf_posenc.patch_model(model, encoder=encoding, decoder=encoding, **options)
    return hf_posenc.patch_model(model, encoding, **options)


@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward(arch, encoding):
    model = patched(arch, encoding).train()
    ids = token_ids(2, 24)
    kwargs = {"decoder_input_ids": ids[:, :10]} if arch in SEQ2SEQ else {}
    output = model(input_ids=ids, **kwargs).last_hidden_state
    assert torch.isfinite(output).all()
    output.pow(2).mean().backward()
    for name, parameter in model.named_parameters():
        if "posenc" in name:  # the encoding's own parameters learn
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("encoding", UNBOUNDED)
@pytest.mark.parametrize("arch", ARCHS)
def test_input_longer_than_table(arch, encoding):
    model = patched(arch, encoding)
    length = 3 * MAX_POSITIONS
    ids = token_ids(1, length)
    kwargs = {"decoder_input_ids": ids} if arch in SEQ2SEQ else {}
    output = model(input_ids=ids, **kwargs).last_hidden_state
    assert output.shape[1] == length and torch.isfinite(output).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_learned_table_still_bounds_the_length(arch):
    model = patched(arch, "learned")
    ids = token_ids(1, 3 * MAX_POSITIONS)
    with pytest.raises((IndexError, RuntimeError)):
        hidden(model, ids)


@pytest.mark.parametrize("encoding", ENCODER_ENCODINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_padding_invariance(arch, encoding):
    model = patched(arch, encoding)
    ids = token_ids(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids[1, 12:] = model.config.pad_token_id or 0
    batched = hidden(model, ids, mask)
    alone = hidden(model, ids[1:, :12], mask[1:, :12])
    torch.testing.assert_close(batched[1, :12], alone[0], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_cached_generation_matches_uncached(arch, encoding):
    encoder = "alibi" if encoding == "none" else encoding
    model = hf_posenc.patch_model(tiny_model(arch, HEADS[arch][1]), encoder=encoder, decoder=encoding)
    prompt = token_ids(2, 16)
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, num_beams=1)
    cached = model.generate(prompt, use_cache=True, **settings)
    uncached = model.generate(prompt, use_cache=False, **settings)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("encoding", ["rope", "alibi", "t5", "relative_key", "none"])
def test_bart_decoder_runs_past_its_table(encoding):
    model = hf_posenc.patch_model(tiny_model("bart", "BartForConditionalGeneration"), encoder="t5", decoder=encoding)
    ids = token_ids(1, 2 * MAX_POSITIONS)
    logits = model(input_ids=ids, decoder_input_ids=ids).logits
    assert logits.shape[1] == 2 * MAX_POSITIONS and torch.isfinite(logits).all()


@pytest.mark.parametrize("encoding", ["rope", "alibi", "t5", "relative_key_query"])
def test_causal_bert_decoder_caches_correctly(encoding):
    torch.manual_seed(0)
    model = tf.BertLMHeadModel(tf.BertConfig(**{**CONFIGS["bert"]().to_dict(), "is_decoder": True})).eval()
    hf_posenc.patch_model(model, encoding)
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    prompt = token_ids(1, 8)
    assert torch.equal(
        model.generate(prompt, use_cache=True, **settings), model.generate(prompt, use_cache=False, **settings)
    )


@pytest.mark.parametrize("arch,head", [(a, h) for a in ARCHS for h in HEADS[a]])
def test_every_task_head(arch, head):
    encoding = "rope" if arch in SEQ2SEQ else "relative_key_query"
    model = tiny_model(arch, head)
    hf_posenc.patch_model(model, encoding)
    ids = token_ids(2, 2 * MAX_POSITIONS if arch not in SEQ2SEQ else 20)
    if head.endswith("MultipleChoice"):
        ids = ids.unsqueeze(1).expand(2, 3, -1).clone()
    ids[..., -1] = model.config.eos_token_id or 4  # BART classification heads pool the last EOS
    output = model(input_ids=ids)
    assert all(torch.isfinite(v).all() for v in output.values() if isinstance(v, torch.Tensor))
    attention = [m for n, m in model.named_modules() if "_posenc" in m.__dict__]
    assert len(attention) == (4 if arch in SEQ2SEQ and not head.endswith("CausalLM") else 2)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_cross_attention_stays_position_free(arch):
    model = hf_posenc.patch_model(tiny_model(arch, HEADS[arch][1]), "alibi")
    for name, module in model.named_modules():
        if name.endswith("encoder_attn"):
            assert "_posenc" not in module.__dict__
        if name.endswith("self_attn"):
            assert "_posenc" in module.__dict__


@pytest.mark.parametrize("arch", ARCHS)
def test_learned_patch_is_the_identity(arch):
    model = tiny_model(arch)
    ids = token_ids(2, 30)
    before = hidden(model, ids)
    hf_posenc.patch_model(model, "learned")
    assert torch.equal(hidden(model, ids), before)


@pytest.mark.parametrize("encoding", ["relative_key", "relative_key_query", "t5"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "bart"])
def test_zero_initialized_hybrid_preserves_the_function(arch, encoding):
    model = tiny_model(arch)
    ids = token_ids(2, 30)
    before = hidden(model, ids)
    patched_model = hf_posenc.patch_model(copy.deepcopy(model), encoding, keep_absolute=True)
    torch.testing.assert_close(hidden(patched_model, ids), before, atol=ATOL, rtol=ATOL)
    spec = hf_posenc.patch_spec(patched_model)["stacks"]["encoder"]
    assert spec["keep_absolute"] and spec["options"]["init"] == "zeros"


@pytest.mark.parametrize("arch", ARCHS)
def test_unpatch_restores_the_model(arch):
    model = tiny_model(arch)
    ids = token_ids(2, 30)
    before = hidden(model, ids)
    hf_posenc.patch_model(model, "t5")
    assert not torch.allclose(hidden(model, ids), before)
    hf_posenc.unpatch_model(model)
    assert torch.equal(hidden(model, ids), before)
    assert hf_posenc.patch_spec(model) is None and model.config._attn_implementation == "sdpa"
    assert not any("posenc" in name for name, _ in model.named_parameters())


def test_relative_encodings_drop_the_absolute_table_from_the_optimizer():
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    names = [name for name, _ in model.named_parameters()]
    assert not any("position_embeddings" in name for name in names)
    assert "embeddings.position_embeddings.weight" not in model.state_dict()


def test_shared_encodings_compute_their_bias_once_per_forward(monkeypatch):
    model = hf_posenc.patch_model(tiny_model("bert"), "t5")
    calls = []
    encoding = model.encoder.posenc
    original = type(encoding)._bias
    monkeypatch.setattr(type(encoding), "_bias", lambda self, *a: calls.append(1) or original(self, *a))
    model(token_ids(1, 10))
    model(token_ids(1, 12))
    assert len(calls) == 2  # one per forward, not one per layer (2 layers)


def test_per_layer_tables_are_independent():
    model = hf_posenc.patch_model(tiny_model("bert"), "relative_key")
    tables = [layer.attention.self.posenc.distance_embedding.weight for layer in model.encoder.layer]
    assert tables[0].data_ptr() != tables[1].data_ptr()
    assert tables[0].shape == (2 * MAX_POSITIONS - 1, 8)  # BERT's former table: 2 * max_position_embeddings - 1 rows


def test_deepcopy_keeps_the_patch_independent():
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    clone = copy.deepcopy(model)
    ids = token_ids(1, 20)
    torch.testing.assert_close(hidden(clone, ids), hidden(model, ids))
    (encoding, context) = clone.encoder.layer[0].attention.self.__dict__["_posenc"]
    assert encoding is clone.encoder.posenc and encoding is not model.encoder.posenc


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, raised before anything changes
# ---------------------------------------------------------------------------------------------------------------------


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, repr(model), model.config.to_json_string()


def assert_unchanged(model, snapshot):
    state, structure, config = snapshot
    assert repr(model) == structure and model.config.to_json_string() == config
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "args,kwargs,error,message",
    [
        (("no-such-encoding",), {}, ValueError, "Valid encodings"),
        (("rope",), {"bsae": 10}, TypeError, "Valid options: \\['base', 'factor'"),
        (("rope",), {"scaling": "dynamic", "factor": 2.0}, ValueError, "scaling must be one of"),
        (("rope",), {"scaling": "yarn"}, ValueError, "needs factor > 1"),
        (("alibi",), {"slope_scale": -1}, ValueError, "slope_scale must be > 0"),
        (("t5",), {"num_buckets": 8, "max_distance": 3}, ValueError, "max_distance must be"),
        (("relative_key",), {"max_distance": 0}, ValueError, "max_distance must be an int >= 1"),
        (("relative_key",), {"init": "xavier"}, ValueError, "init must be one of"),
        (("none",), {}, ValueError, "bag of words"),
        (("sinusoidal",), {"keep_absolute": True}, ValueError, "only applies to relative"),
        ((), {}, ValueError, "Name an encoding"),
        (("rope",), {"decoder": "rope"}, ValueError, "has no decoder stack"),
        ((42,), {}, TypeError, "must be a name or a dict"),
    ],
)
def test_bad_requests_raise_before_changing_anything(args, kwargs, error, message):
    model = tiny_model("bert")
    snapshot = _snapshot(model)
    with pytest.raises(error, match=message):
        hf_posenc.patch_model(model, *args, **kwargs)
    assert_unchanged(model, snapshot)


def test_none_is_refused_on_the_bart_encoder_but_not_the_decoder():
    model = tiny_model("bart")
    with pytest.raises(ValueError, match="bag of words"):
        hf_posenc.patch_model(model, "none")
    hf_posenc.patch_model(model, encoder="rope", decoder="none")
    assert hf_posenc.patch_spec(model)["stacks"]["decoder"]["encoding"] == "none"


def test_unsupported_model_lists_the_supported_types():
    model = tf.GPT2Model(tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=99))
    with pytest.raises(ValueError, match="Supported model types: \\['bart', 'bert'"):
        hf_posenc.patch_model(model, "alibi")
    with pytest.raises(TypeError, match="expects a transformers model"):
        hf_posenc.patch_model("bert-base-uncased", "alibi")


def test_patching_twice_needs_replace():
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="already patched.*replace=True"):
        hf_posenc.patch_model(model, "rope")
    assert_unchanged(model, snapshot)
    hf_posenc.patch_model(model, "rope", replace=True)
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["encoding"] == "rope"
    assert not hasattr(model.encoder, "posenc") or type(model.encoder.posenc).name == "rope"
    fresh = hf_posenc.patch_model(tiny_model("bert"), "rope")
    ids = token_ids(1, 20)
    torch.testing.assert_close(hidden(model, ids), hidden(fresh, ids))


def test_replacing_back_to_learned_restores_the_table():
    model = tiny_model("bert")
    ids = token_ids(1, 20)
    before = hidden(model, ids)
    hf_posenc.patch_model(model, "rope")
    hf_posenc.patch_model(model, "learned", replace=True)
    assert torch.equal(hidden(model, ids), before)


def test_switching_the_attention_backend_is_detected():
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="would be silently dropped"):
        model(token_ids(1, 10))
    model.set_attn_implementation(hf_posenc.BACKEND)
    model(token_ids(1, 10))


def test_aliases_resolve_to_canonical_names():
    model = hf_posenc.patch_model(tiny_model("bert"), "relative")
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["encoding"] == "relative_key"
    assert all(target in ENCODINGS for target in hf_posenc.ALIASES.values())


def test_recorded_options_are_resolved_and_json_serializable():
    import json

    model = hf_posenc.patch_model(tiny_model("bert"), "sinusoidal")
    options = hf_posenc.patch_spec(model)["stacks"]["encoder"]["options"]
    table_std = tiny_model("bert").embeddings.position_embeddings.weight.std().item()
    assert options["scale"] == pytest.approx(table_std * 2**0.5)
    json.loads(model.config.to_json_string())


@pytest.mark.parametrize("encoding", RELATIVE)
@pytest.mark.parametrize(
    "arch,head", [("bert", "BertForSequenceClassification"), ("bart", "BartForConditionalGeneration")]
)
def test_gradient_checkpointing_gives_the_same_gradients(arch, head, encoding):
    plain = hf_posenc.patch_model(tiny_model(arch, head), encoding).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    ids = token_ids(2, 20)
    labels = torch.tensor([0, 1]) if arch == "bert" else ids
    plain(input_ids=ids, labels=labels).loss.backward()
    checkpointed(input_ids=ids, labels=labels).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["bert", "roberta", "bart"])
def test_unpatch_after_max_length_restores_the_limit(arch):
    model = tiny_model(arch)
    limit = model.config.max_position_embeddings
    hf_posenc.patch_model(model, "alibi", max_length=4 * MAX_POSITIONS)
    hf_posenc.unpatch_model(model)
    assert model.config.max_position_embeddings == limit


# ---------------------------------------------------------------------------------------------------------------------
# One option schema for every call form
# ---------------------------------------------------------------------------------------------------------------------


def test_options_are_validated_when_stacks_are_named():
    bart = tiny_model("bart")
    before = {k: v.clone() for k, v in bart.state_dict().items()}
    with pytest.raises(TypeError, match=r"\['bas', 'totally_bogus'\].*Valid options"):
        hf_posenc.patch_model(bart, encoder="rope", decoder="rope", bas=500, totally_bogus="x")
    assert hf_posenc.patch_spec(bart) is None
    assert all(torch.equal(before[k], v) for k, v in bart.state_dict().items())


def test_options_apply_to_a_stack_named_alone():
    model = hf_posenc.patch_model(tiny_model("bert"), encoder="rope", base=500)
    assert hf_posenc.patch_spec(model)["stacks"]["encoder"]["options"]["base"] == 500


def test_options_apply_to_every_stack_requested_by_name():
    bart = hf_posenc.patch_model(tiny_model("bart"), encoder="rope", decoder={"encoding": "rope", "base": 20}, base=50)
    stacks = hf_posenc.patch_spec(bart)["stacks"]
    assert stacks["encoder"]["options"]["base"] == 50 and stacks["decoder"]["options"]["base"] == 20


def test_options_that_no_stack_takes_are_refused():
    with pytest.raises(TypeError, match="own request dict"):
        hf_posenc.patch_model(tiny_model("bart"), encoder={"encoding": "rope"}, decoder={"encoding": "t5"}, base=5)
    with pytest.raises(TypeError, match=r"'base'.*'t5'.*apply to every stack"):
        hf_posenc.patch_model(tiny_model("bart"), encoder="t5", decoder="rope", base=500)


# ---------------------------------------------------------------------------------------------------------------------
# State lives on the patched instance
# ---------------------------------------------------------------------------------------------------------------------


def test_models_sharing_a_config_are_patched_alone():
    config = tiny_model("bert").config
    a, b = tf.BertModel(config), tf.BertModel(config)
    hf_posenc.patch_model(a, "alibi")
    assert hf_posenc.patch_spec(b) is None and b.config.model_type == "bert"
    assert b.config._attn_implementation != hf_posenc.BACKEND
    assert all(m.config is a.config for m in a.modules() if "config" in vars(m))
    assert "posenc" not in b.config.to_dict() or b.config.to_dict()["posenc"] is None
    hf_posenc.patch_model(b, "rope")
    assert hf_posenc.patch_spec(a)["stacks"]["encoder"]["encoding"] == "alibi"


def test_no_transformers_class_is_modified():
    assert tf.BertConfig.to_dict is tf.PreTrainedConfig.to_dict
    assert "save_pretrained" not in vars(tf.BertConfig)
    model = hf_posenc.patch_model(tiny_model("bert"), "alibi")
    assert type(model.config).__name__ == "PatchedBertConfig" and model.config.model_type == "bert"
    assert model.config.to_dict()["model_type"] == "posenc-bert"
    hf_posenc.unpatch_model(model)
    assert type(model.config) is tf.BertConfig and model.config.to_dict()["model_type"] == "bert"


def test_patched_models_pickle_and_deepcopy():
    model = hf_posenc.patch_model(tiny_model("bert"), "rope", base=500)
    batch = {"input_ids": torch.arange(3, 20).unsqueeze(0)}
    expected = model(**batch).last_hidden_state
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.config) is type(model.config)
        assert clone.config.to_dict()["model_type"] == "posenc-bert"
        torch.testing.assert_close(clone(**batch).last_hidden_state, expected)
