"""Position augmentation (PoSE, randomized positions): the sampler, the collator wrapper and their validation."""

from __future__ import annotations

import grimp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_posenc.augmentation import METHODS, PositionAugmentation, sample_position_ids
from tests.tiny_models import tiny_model


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
    first, second = collate(_features(4, 20)), collate(_features(4, 20))
    assert not torch.equal(first["position_ids"], second["position_ids"])  # the stream advances
    other = PositionAugmentation(512, seed=4)(_features(4, 20))
    assert not torch.equal(first["position_ids"], other["position_ids"])


def test_collator_wraps_another_collator():
    def pad(features):
        length = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) != 0).long()}

    features = [{"input_ids": [5, 6, 7]}, {"input_ids": [5, 6, 7, 8, 9]}]
    batch = PositionAugmentation(64, method="randomized", collator=pad)(features)
    assert batch["position_ids"].shape == (2, 5) and int(batch["position_ids"].max()) < 64


def test_dataloader_workers_get_distinct_streams():
    data = _features(8, 12)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=PositionAugmentation(4096))
    first, second = [b["position_ids"] for b in loader]
    assert not torch.equal(first, second)  # each worker holds a copy of the collator: streams must differ


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
