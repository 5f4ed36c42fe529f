"""Position augmentation (PoSE, randomized positions): the sampler, the collator wrapper and their validation."""

from __future__ import annotations

import grimp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_posenc
from hf_posenc import ENCODINGS, patch_model
from hf_posenc.augmentation import METHODS, PositionAugmentation, sample_position_ids
from tests.tiny_models import HEADS, tiny_model, token_ids


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 40),
    extra=st.integers(0, 200),
    method=st.sampled_from(METHODS),
    chunks=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_ids_are_increasing_and_below_the_target(batch, length, extra, method, chunks, seed):
    target = length + extra
    ids = sample_position_ids(
        batch, length, target_length=target, method=method, generator=_generator(seed), num_chunks=chunks
    )
    assert ids.shape == (batch, length) and ids.dtype == torch.long
    assert bool((ids.diff(dim=-1) > 0).all())
    assert int(ids.min()) >= 0 and int(ids.max()) < target


@pytest.mark.parametrize("method", METHODS)
def test_target_equal_to_length_gives_the_plain_positions(method):
    ids = sample_position_ids(3, 17, target_length=17, method=method, generator=_generator())
    assert torch.equal(ids, torch.arange(17).expand(3, -1))


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_pose_keeps_num_chunks_runs_starting_at_zero(chunks):
    ids = sample_position_ids(200, 32, target_length=4096, num_chunks=chunks, generator=_generator())
    assert bool((ids[:, 0] == 0).all())
    jumps = (ids.diff(dim=-1) > 1).sum(dim=-1)
    assert int(jumps.max()) == chunks - 1  # a skip of 0 merges two chunks, so at most chunks - 1 jumps
    assert float(jumps.float().mean()) > chunks - 1.1  # and with 4096 - 32 possible skips that is rare


def test_pose_exercises_distances_up_to_the_target():
    ids = sample_position_ids(4000, 16, target_length=256, generator=_generator())
    spans = ids[:, -1] - ids[:, 0]
    assert int(spans.max()) >= 250 and int(spans.min()) <= 20
    assert int(ids.max()) == 255  # the last id reaches target - 1


def test_randomized_covers_the_whole_range_uniformly():
    ids = sample_position_ids(2000, 8, target_length=64, method="randomized", generator=_generator())
    counts = torch.bincount(ids.flatten(), minlength=64).float()
    expected = 2000 * 8 / 64  # 250 per position; binomial std ~ 15
    assert float((counts - expected).abs().max()) < 80


def test_the_generator_makes_it_repeatable():
    a = sample_position_ids(4, 32, target_length=1024, generator=_generator(5))
    b = sample_position_ids(4, 32, target_length=1024, generator=_generator(5))
    c = sample_position_ids(4, 32, target_length=1024, generator=_generator(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(target_length=8), ValueError, "target_length (8) must be >= the input length (16)"),
        (dict(target_length=64, method="yarn"), ValueError, "['pose', 'randomized']"),
        (dict(target_length=64, num_chunks=0), ValueError, "num_chunks must be an int >= 1"),
        (dict(target_length=64.0), TypeError, "target_length must be an int"),
        (dict(target_length=True), TypeError, "target_length must be an int"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, error, words):
    with pytest.raises(error) as raised:
        sample_position_ids(2, 16, **kwargs)
    assert words in str(raised.value)


def _features(n: int, length: int) -> list[dict]:
    return [{"input_ids": list(range(1, length + 1)), "attention_mask": [1] * length, "labels": i} for i in range(n)]


def test_collator_adds_position_ids_and_is_deterministic_given_the_seed():
    batches = [PositionAugmentation(512, seed=3)(_features(4, 20)) for _ in range(2)]
    assert torch.equal(batches[0]["position_ids"], batches[1]["position_ids"])
    assert batches[0]["position_ids"].shape == (4, 20) and batches[0]["labels"].tolist() == [0, 1, 2, 3]
    collate = PositionAugmentation(512, seed=3)
    first, again = collate(_features(4, 20)), collate(_features(4, 20))
    assert torch.equal(first["position_ids"], again["position_ids"])  # a batch's ids depend on the batch alone
    other = PositionAugmentation(512, seed=4)(_features(4, 20))
    assert not torch.equal(first["position_ids"], other["position_ids"])


def test_ids_depend_on_the_batch_and_the_epoch_not_on_earlier_batches():
    later = _features(4, 20)
    later[0]["labels"] = 9
    collate = PositionAugmentation(512, seed=3)
    after_others = [collate(_features(4, 20)), collate(later)][-1]["position_ids"]
    assert torch.equal(PositionAugmentation(512, seed=3)(later)["position_ids"], after_others)  # what resume needs
    assert not torch.equal(after_others, collate(_features(4, 20))["position_ids"])  # another batch, other ids
    collate.set_epoch(1)
    assert not torch.equal(after_others, collate(later)["position_ids"])
    with pytest.raises(ValueError, match="epoch"):
        collate.set_epoch(-1)


def test_collator_wraps_another_collator():
    def pad(features):
        length = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) != 0).long()}

    features = [{"input_ids": [5, 6, 7]}, {"input_ids": [5, 6, 7, 8, 9]}]
    batch = PositionAugmentation(64, method="randomized", collator=pad)(features)
    assert batch["position_ids"].shape == (2, 5) and int(batch["position_ids"].max()) < 64


def _padded(lengths: list[int], width: int) -> list[dict]:
    return [
        {"input_ids": list(range(1, n + 1)) + [0] * (width - n), "attention_mask": [1] * n + [0] * (width - n)}
        for n in lengths
    ]


@pytest.mark.parametrize("method", ["pose", "randomized"])
def test_a_padded_row_gets_the_ids_of_an_input_of_its_own_length(method):
    """Each row's real tokens get increasing ids over the whole target range, drawn for their own count (a 4-token
    row's last id averages about 4/5 of the target, not the 4 smallest of a 32-token draw's, about 8); padding gets
    id 0. Unpadded batches draw as before (one draw for the batch)."""
    collate = PositionAugmentation(64, method=method, seed=1)
    last_ids = []
    for draw in range(200):
        features = _padded([4, 32], 32)
        features[0]["input_ids"][0] = draw + 100  # another batch each time: other ids
        ids = collate(features)["position_ids"]
        assert ids.shape == (2, 32) and torch.equal(ids[0, 4:], torch.zeros(28, dtype=torch.long))
        assert bool((ids[:, :4].diff(dim=-1) > 0).all()) and bool((ids[1].diff() > 0).all()) and int(ids.max()) < 64
        last_ids.append(int(ids[0, 3]))
    assert sum(last_ids) / len(last_ids) > 30
    full = _features(3, 12)
    batch = collate(full)
    generator = collate._generator({k: v for k, v in batch.items() if k != "position_ids"})
    expected = sample_position_ids(3, 12, target_length=64, method=method, generator=generator)
    assert torch.equal(batch["position_ids"], expected)


def test_dataloader_workers_draw_what_one_process_draws():
    data = _features(8, 12)
    collate = PositionAugmentation(4096)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate)
    first, second = [b["position_ids"] for b in loader]
    assert not torch.equal(first, second)  # the batches differ (their labels), and so do their ids
    alone = [b["position_ids"] for b in torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate)]
    assert torch.equal(first, alone[0]) and torch.equal(second, alone[1])


@pytest.mark.parametrize("model_type, offset", [("bert", 0), ("roberta", 2), ("bart", 0)])
def test_for_model_reads_the_row_offset(model_type, offset):
    collate = PositionAugmentation.for_model(tiny_model(model_type), 256, seed=0)
    plain = PositionAugmentation(256, seed=0)(_features(2, 10))["position_ids"]
    assert collate.offset == offset and torch.equal(collate(_features(2, 10))["position_ids"], plain + offset)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(target_length=0), ValueError, "target_length must be an int >= 1"),
        (dict(target_length=64, method="Pose"), ValueError, "valid methods: ['pose', 'randomized']"),
        (dict(target_length=64, seed=-1), ValueError, "seed must be an int >= 0"),
        (dict(target_length=64, collator="pad"), TypeError, "collator must be callable"),
    ],
)
def test_collator_validates_at_construction(kwargs, error, words):
    with pytest.raises(error) as raised:
        PositionAugmentation(**kwargs)
    assert words in str(raised.value)


def test_collator_refuses_batches_it_cannot_handle():
    with pytest.raises(ValueError, match="must be >= the input length"):
        PositionAugmentation(8)(_features(2, 16))
    with pytest.raises(ValueError, match="already has position_ids"):
        PositionAugmentation(64)([{"input_ids": [1, 2], "position_ids": [0, 1]}])


def test_augmentation_imports_only_torch_and_the_bottom_layers():
    graph = grimp.build_graph("hf_posenc")
    imported = {m for m in graph.find_modules_directly_imported_by("hf_posenc.augmentation") if "hf_posenc" in m}
    assert imported <= {"hf_posenc.architectures", "hf_posenc.record", "hf_posenc.option_checks"}


# ---------------------------------------------------------------------------------------------------------------------
# Explicit position ids reach every encoding, in BERT and in both BART stacks
# ---------------------------------------------------------------------------------------------------------------------

SHORT, TARGET = 12, 48  # the tiny models have 64 trained positions, so the long reference runs without extension
ENCODER_ENCODINGS = [e for e in sorted(ENCODINGS) if e != "none"]  # 'none' is refused on an encoder


def _patched(model_type: str, encoding: str, keep_absolute: bool = False) -> torch.nn.Module:
    model = tiny_model(model_type)
    if model_type == "bart" and encoding == "none":
        patch_model(model, encoder="alibi", decoder="none")
    else:
        patch_model(model, encoding, keep_absolute=keep_absolute)
    with torch.no_grad():  # relative terms start at zero for some encodings: make positions matter
        generator = _generator(1)
        for name, parameter in model.named_parameters():
            if "posenc" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def _placed(ids: torch.Tensor, positions: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids` put at `positions` of a `length`-token sequence of filler tokens, and the mask that keeps only them."""
    long = torch.full((ids.shape[0], length), 50, dtype=torch.long).scatter(1, positions, ids)
    mask = torch.zeros(ids.shape[0], length, dtype=torch.long).scatter(1, positions, 1)
    return long, mask


def _outputs_short_and_long(model, model_type: str, positions: torch.Tensor, decoder_positions: torch.Tensor):
    ids, decoder_ids = token_ids(2, SHORT, seed=3), token_ids(2, SHORT, seed=4)
    long, mask = _placed(ids, positions, TARGET)
    with torch.no_grad():
        if model_type != "bart":
            short = model(input_ids=ids, position_ids=positions).last_hidden_state
            full = model(input_ids=long, attention_mask=mask).last_hidden_state
            return [(short, full.gather(1, positions.unsqueeze(-1).expand_as(short)))]
        long_decoder, decoder_mask = _placed(decoder_ids, decoder_positions, TARGET)
        short = model(
            input_ids=ids,
            decoder_input_ids=decoder_ids,
            position_ids=positions,
            decoder_position_ids=decoder_positions,
        )
        full = model(
            input_ids=long, attention_mask=mask, decoder_input_ids=long_decoder, decoder_attention_mask=decoder_mask
        )

    def at(x, p):
        return x.gather(1, p.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    return [
        (short.encoder_last_hidden_state, at(full.encoder_last_hidden_state, positions)),
        (short.last_hidden_state, at(full.last_hidden_state, decoder_positions)),
    ]


CASES = [("bert", e, False) for e in ENCODER_ENCODINGS] + [("bart", e, False) for e in sorted(ENCODINGS)]
CASES += [("bert", "rope", True), ("bart", "t5", True)]  # hybrids keep the learned table beside the relative terms


@pytest.mark.parametrize("model_type, encoding, keep_absolute", CASES)
def test_augmented_ids_equal_the_tokens_placed_in_a_long_masked_sequence(model_type, encoding, keep_absolute):
    model = _patched(model_type, encoding, keep_absolute)
    positions = sample_position_ids(2, SHORT, target_length=TARGET, num_chunks=3, generator=_generator(7))
    decoder_positions = sample_position_ids(
        2, SHORT, target_length=TARGET, method="randomized", generator=_generator(8)
    )
    pairs = _outputs_short_and_long(model, model_type, positions, decoder_positions)
    for short, full in pairs:
        torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    # Control: the default positions 0..SHORT-1 give other outputs, so the ids did make the difference.
    default = torch.arange(SHORT).expand(2, -1)
    other = _outputs_short_and_long(model, model_type, default, decoder_positions)
    assert not torch.allclose(pairs[0][0], other[0][0], atol=1e-4)
    if model_type == "bart":  # the decoder's own ids (its encoder fixed); 'none' has no positions to change
        other = _outputs_short_and_long(model, model_type, positions, default)
        assert torch.allclose(pairs[1][0], other[1][0], atol=1e-4) == (encoding == "none")


def test_decoder_positions_stay_causal():
    model = _patched("bart", "rope")
    ids, decoder_ids = token_ids(1, SHORT, seed=3), token_ids(1, SHORT, seed=4)
    positions = sample_position_ids(1, SHORT, target_length=TARGET, generator=_generator(2))
    changed = decoder_ids.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        outputs = [
            model(input_ids=ids, decoder_input_ids=d, decoder_position_ids=positions).last_hidden_state
            for d in (decoder_ids, changed)
        ]
    torch.testing.assert_close(outputs[0][:, :-1], outputs[1][:, :-1], atol=0, rtol=0)  # earlier tokens unaffected


def test_roberta_takes_row_ids_and_the_collator_offsets_them():
    model = _patched("roberta", "alibi")
    collate = PositionAugmentation.for_model(model, TARGET, seed=0)
    batch = collate([{"input_ids": token_ids(1, SHORT, seed=s)[0].tolist()} for s in range(2)])
    positions = batch["position_ids"] - 2  # logical
    long, mask = _placed(batch["input_ids"], positions, TARGET)
    with torch.no_grad():
        short = model(**batch).last_hidden_state
        full = model(input_ids=long, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(short, full.gather(1, positions.unsqueeze(-1).expand_as(short)), atol=1e-5, rtol=0)


def test_a_stack_called_on_its_own_after_explicit_ids_gets_default_positions():
    model = _patched("bart", "alibi")
    ids = token_ids(2, SHORT)
    positions = sample_position_ids(2, SHORT, target_length=TARGET, generator=_generator())
    with torch.no_grad():
        plain = model.get_encoder()(input_ids=ids).last_hidden_state
        model(input_ids=ids, decoder_input_ids=ids, position_ids=positions)
        again = model.get_encoder()(input_ids=ids).last_hidden_state
    assert torch.equal(plain, again)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_bart_encoder_run_alone_takes_the_ids_it_is_handed(encoding):
    # What `generate` and the seq2seq recipe do: run the encoder first with augmented ids, then hand its output on.
    model = _patched("bart", encoding)
    positions = sample_position_ids(2, SHORT, target_length=TARGET, num_chunks=3, generator=_generator(7))
    ids = token_ids(2, SHORT, seed=3)
    long, mask = _placed(ids, positions, TARGET)
    with torch.no_grad():
        alone = model.get_encoder()(input_ids=ids, position_ids=positions).last_hidden_state
        through_model = model(input_ids=ids, decoder_input_ids=ids, position_ids=positions)
        full = model.get_encoder()(input_ids=long, attention_mask=mask).last_hidden_state
        default = model.get_encoder()(input_ids=ids).last_hidden_state
    assert torch.equal(alone, through_model.encoder_last_hidden_state)
    placed = full.gather(1, positions.unsqueeze(-1).expand_as(alone))
    torch.testing.assert_close(alone, placed, atol=1e-5, rtol=0)
    assert not torch.allclose(alone, default, atol=1e-4)


def test_ids_for_a_stack_the_call_did_not_run_do_not_reach_its_next_call():
    model = _patched("bart", "t5")
    ids = token_ids(2, SHORT)
    positions = sample_position_ids(2, SHORT, target_length=TARGET, generator=_generator())
    with torch.no_grad():
        plain = model.get_encoder()(input_ids=ids)
        model(encoder_outputs=plain, decoder_input_ids=ids, position_ids=positions)  # the encoder does not run
        again = model.get_encoder()(input_ids=ids).last_hidden_state
    assert torch.equal(plain.last_hidden_state, again)


def test_ids_of_a_call_that_raised_do_not_reach_the_next_call():
    model = _patched("bart", "learned")
    ids = token_ids(2, SHORT)
    positions = sample_position_ids(2, SHORT, target_length=TARGET, generator=_generator())
    with torch.no_grad():
        plain = model.get_encoder()(input_ids=ids).last_hidden_state
        with pytest.raises(ValueError, match="decoder's learned table has"):  # after the encoder's ids were taken
            model(input_ids=ids, decoder_input_ids=ids, position_ids=positions, decoder_position_ids=positions + 100)
        again = model.get_encoder()(input_ids=ids).last_hidden_state
    assert torch.equal(plain, again)


@pytest.mark.parametrize("model_type", ["bert", "bart"])
def test_pose_trains_the_learned_rows_past_the_training_length(model_type):
    model = tiny_model(model_type).train()
    patch_model(model, "learned", max_length=256)
    base = model.base_model
    tables = [base.embeddings.position_embeddings] if model_type == "bert" else [base.encoder.embed_positions]
    offset = 0 if model_type == "bert" else 2
    ids = token_ids(4, 32)

    def rows_with_gradient(position_ids) -> set[int]:
        model.zero_grad()
        kwargs = {} if position_ids is None else {"position_ids": position_ids}
        if model_type == "bart":
            kwargs["decoder_input_ids"] = ids
        model(input_ids=ids, **kwargs).last_hidden_state.sum().backward()
        grad = tables[0].weight.grad
        return set((grad.abs().sum(-1) > 0).nonzero().flatten().tolist())

    plain = rows_with_gradient(None)
    assert max(plain) == 31 + offset  # positions 0..31 only
    augmented = sample_position_ids(4, 32, target_length=256, generator=_generator())
    pose = rows_with_gradient(augmented)
    assert max(pose) > 64 + offset and pose == set((augmented + offset).flatten().tolist())


@pytest.mark.parametrize("model_type", ["bert", "bart"])
def test_ids_past_a_learned_table_name_the_fix(model_type):
    model = tiny_model(model_type)
    patch_model(model, "learned")
    ids = token_ids(1, 8)
    far = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 70]])
    kwargs = {"decoder_input_ids": ids} if model_type == "bart" else {}
    with pytest.raises(ValueError, match=r"reach position 70, but the encoder's learned table has 64 positions"):
        model(input_ids=ids, position_ids=far, **kwargs)
    mapped = patch_model(tiny_model(model_type), "learned", position_ids="recurrent", max_length=128)
    with torch.no_grad():
        mapped(input_ids=ids, position_ids=far, **kwargs)  # mapped into the trained rows: allowed


def test_unpatch_removes_every_hook_and_restores_the_outputs():
    model = tiny_model("bart")
    ids = token_ids(2, 10)
    with torch.no_grad():
        before = model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    patch_model(model, "alibi", attention_window=4, attention_scale="log", attention_scale_length=8)
    patch_model(model, "rope", attention_window=6, replace=True)
    base = model.base_model
    # One of each per stack (and BART's encoder its own, for ids handed to it alone): the replaced patch's are gone.
    assert len(base._forward_pre_hooks) == len(base._forward_hooks) == 2
    assert len(base.encoder._forward_pre_hooks) == 2 and len(base.decoder._forward_pre_hooks) == 1
    hf_posenc.unpatch_model(model)
    modules = [base, base.encoder, base.decoder, base.encoder.embed_positions, base.decoder.embed_positions]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in modules)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, decoder_input_ids=ids).last_hidden_state, before)


@pytest.mark.parametrize("encoding", ["alibi", "relative_key", "learned"])
def test_gradient_checkpointing_replays_the_layers_with_the_explicit_ids(encoding):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("bert", head="BertForSequenceClassification").train()
        patch_model(model, encoding)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        positions = sample_position_ids(2, SHORT, target_length=TARGET, generator=_generator(3))
        model(input_ids=token_ids(2, SHORT), position_ids=positions).logits.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


HEAD_CASES = [("bert", h) for h in HEADS["bert"]] + [("bart", h) for h in HEADS["bart"]]


@pytest.mark.parametrize("model_type, head", HEAD_CASES)
def test_every_task_head_routes_the_ids(model_type, head):
    model = patch_model(tiny_model(model_type, head=head), "alibi")
    shape = (2, 3, SHORT) if head.endswith("MultipleChoice") else (2, SHORT)
    ids = token_ids(shape[0] * (3 if len(shape) == 3 else 1), SHORT).view(shape)
    ids[..., -1] = 2  # BART's classification heads read the eos token
    names = ["position_ids"] + (["decoder_position_ids"] if model_type == "bart" and "CausalLM" not in head else [])
    extra = {"decoder_input_ids": ids} if len(names) == 2 else {}

    def output(positions):
        with torch.no_grad():
            kwargs = {} if positions is None else {n: positions for n in names}
            result = model(input_ids=ids, **extra, **kwargs)
        return result[0]

    plain = torch.arange(SHORT).expand(shape)
    assert torch.equal(output(plain), output(None))  # explicit default positions change nothing
    assert not torch.equal(output(plain * 3), output(None))  # and others reach the attention
