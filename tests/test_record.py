"""The typed patch record (`hf_posenc.record`): one reader, one writer, the 0.1.0 format, forward compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_posenc.record import PatchRecord, RecordWarning, StackRecord, read_record, write_record

FIXTURES = Path(__file__).parent / "fixtures" / "format_v0_1_0"


@pytest.mark.parametrize("name", ["bert_alibi", "bart_t5_rope", "bert_grouped"])
def test_saved_blocks_round_trip_unchanged(name):
    block = json.loads((FIXTURES / name / "config.json").read_text())["posenc"]
    assert PatchRecord.from_dict(block).to_dict() == block


def test_length_fields_are_written_only_when_set():
    record = PatchRecord({"encoder": StackRecord("learned", {"init": "copy"}, max_length=128)})
    entry = record.to_dict()["stacks"]["encoder"]
    assert entry == {"encoding": "learned", "options": {"init": "copy"}, "keep_absolute": False, "max_length": 128}
    assert record.stacks["encoder"].keeps_table and not record.stacks["encoder"].mapped


def test_reader_and_writer_on_a_config_object():
    class Config:
        pass

    config = Config()
    assert read_record(config) is None
    write_record(config, PatchRecord({"decoder": StackRecord("rope", {"base": 500.0})}))
    assert isinstance(config.posenc, dict)  # stays JSON on the config, as transformers serializes it
    assert read_record(config).stacks["decoder"].options == {"base": 500.0}
    write_record(config, None)
    assert config.posenc is None and read_record(config) is None


def test_unknown_keys_of_a_newer_version_warn_and_are_ignored():
    block = {"version": "0.9.0", "future": 1, "stacks": {"encoder": {"encoding": "alibi", "options": {}, "x": 2}}}
    with pytest.warns(RecordWarning) as caught:
        record = PatchRecord.from_dict(block)
    assert len(caught) == 2 and record.stacks["encoder"] == StackRecord("alibi")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"version": "0.1.0", "stacks": {"encoder": {"encoding": "fourier", "options": {}}}}, "valid encodings: "),
        ({"version": "0.1.0", "stacks": {"encoder": {"encoding": "rope", "options": {"bas": 1}}}}, "valid: "),
        ({"version": "0.1.0", "stacks": {"middle": {"encoding": "rope", "options": {}}}}, "unknown stack"),
        ({"version": "1.0.0", "stacks": {"encoder": {"encoding": "rope", "options": {}}}}, "newer major"),
        ({"stacks": {"encoder": {"encoding": "rope", "options": {}}}}, "no valid version"),
        ({"version": "0.1.0", "stacks": {"encoder": {"encoding": "rope"}}}, "needs 'encoding' and 'options'"),
        (None, "no 'posenc' block"),
    ],
)
def test_invalid_blocks_are_clear_errors(block, message):
    with pytest.raises(ValueError, match=message):
        PatchRecord.from_dict(block)
