"""Faults in the recipes: interrupted and resumed runs, damaged files, resumes of another run, invalid settings.

Each test builds a tiny local run (the 2-layer BERT and CSV reviews of `recipe_fixtures`); nothing is downloaded.
Interruptions are simulated by `stop_after` (a clean stop with a checkpoint) and by a save that raises midway after
leaving a truncated file (what a kill during `save_state` leaves). Resumed runs are compared with an uninterrupted
one exactly: losses, every weight and the test scores.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import accelerate
import pytest
import torch
from recipe_fixtures import make_reviews_csv, make_tiny_bert, tiny_run_config

from hf_posenc import cli
from hf_posenc.hub.files import atomic_path, atomic_write, publish_folder, read_json
from hf_posenc.recipes.classification import run_classification
from hf_posenc.recipes.data import load_running_text, load_text_classification
from hf_posenc.recipes.settings import RESUME_MAY_DIFFER, RunConfig, Seq2SeqConfig, SweepConfig, settings_differences
from hf_posenc.recipes.sweep import run_sweep
from hf_posenc.recipes.training import CHECKPOINT_MANIFEST, find_checkpoint

# 80 reviews: 64 train, batch 8, accumulation 2 -> 4 optimizer steps per epoch; 6 steps cross an epoch boundary.
COMMON = dict(max_steps=6, gradient_accumulation_steps=2, eval_lengths=[16, 64], learning_rate=5e-3)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {"bert": make_tiny_bert(root / "bert"), "reviews": make_reviews_csv(root / "reviews.csv"), "root": root}


def tiny_run(assets, folder: Path, **overrides) -> RunConfig:
    return tiny_run_config(assets, folder, **{**dict(train_length=32, eval_lengths=[16, 32], epochs=1), **overrides})


def cli_args(run: RunConfig, **changes) -> list[str]:
    """The `hf-posenc train` command line of `run` with `changes` (None: leave the flag out)."""
    values = {**run.to_dict(), **changes}
    argv = ["train"]
    for name in ("model", "dataset", "encoding", "train_length", "batch_size", "learning_rate", "output_dir"):
        argv += [f"--{name}", str(values[name])]
    argv += ["--eval_lengths", *map(str, values["eval_lengths"]), "--no-progress"]
    for name in ("max_steps", "stop_after", "resume_from", "gradient_accumulation_steps", "checkpoint_every"):
        if values.get(name) is not None:
            argv += [f"--{name}", str(values[name])]
    return argv


@pytest.fixture(scope="module")
def whole(assets):
    """The uninterrupted run every resumed one must match."""
    return run_classification(tiny_run(assets, assets["root"] / "whole", **COMMON), keep_model=True)


@pytest.fixture(scope="module")
def stopped(assets) -> Path:
    """A run folder stopped after step 1 of 2 (a complete checkpoint at checkpoints/step_1)."""
    folder = assets["root"] / "stopped"
    run_classification(tiny_run(assets, folder, max_steps=2, stop_after=1))
    return folder


def copy_run(stopped: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stopped, tmp_path / "run"))


def error_line(stderr: str) -> str:
    """The one error line of `stderr` (progress bars and logs of datasets may come before it); it must be last."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("hf-posenc ") and ": error: " in line]
    assert len(ours) == 1 and lines[-1] == ours[0], stderr
    return lines[-1]


def assert_same_run(resumed: dict, whole: dict) -> None:
    assert resumed["train"]["completed_steps"] == whole["train"]["completed_steps"] == 6
    assert resumed["train"]["losses"] == whole["train"]["losses"]
    scores = {n: (m["accuracy"], m["macro_f1"], m["n"]) for n, m in resumed["metrics"].items()}
    assert scores == {n: (m["accuracy"], m["macro_f1"], m["n"]) for n, m in whole["metrics"].items()}
    expected, found = whole["model"].state_dict(), resumed["model"].state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)


# ---------------------------------------------------------------------------------------------------------------------
# Fault injection: stops and a kill during a save, then resume; exactly the uninterrupted run
# ---------------------------------------------------------------------------------------------------------------------


def test_stopping_at_several_points_and_resuming_each_time_ends_exactly_like_one_run(assets, tmp_path, whole):
    run = tiny_run(assets, tmp_path / "chain", stop_after=1, **COMMON)
    first = run_classification(run)
    assert first["train"]["stopped_early"] and first["train"]["checkpoint"].endswith("step_1")
    for stop in (3, 4, 5):  # mid epoch, at the epoch boundary, just after it
        run.resume_from, run.stop_after = "latest", stop
        part = run_classification(run)
        assert part["train"]["completed_steps"] == stop and "metrics" not in part
    run.stop_after = None
    assert_same_run(run_classification(run, keep_model=True), whole)
    steps = sorted(p.name for p in (tmp_path / "chain" / "checkpoints").iterdir())
    assert steps == ["step_1", "step_3", "step_4", "step_5"]  # no temporary folders left behind


def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_complete_one(assets, tmp_path, monkeypatch, whole):
    # The save at step 4 dies after writing a truncated optimizer.bin, as a kill during `save_state` would leave it.
    original, calls = accelerate.Accelerator.save_state, []

    def dying_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        result = original(self, output_dir, **kwargs)
        if len(calls) == 2:
            optimizer = Path(output_dir) / "optimizer.bin"
            optimizer.write_bytes(optimizer.read_bytes()[:100])
            raise KeyboardInterrupt("killed while saving")
        return result

    run = tiny_run(assets, tmp_path / "killed", checkpoint_every=2, **COMMON)
    monkeypatch.setattr(accelerate.Accelerator, "save_state", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_classification(run)
    monkeypatch.setattr(accelerate.Accelerator, "save_state", original)
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert (checkpoints / "step_2" / CHECKPOINT_MANIFEST).is_file() and not (checkpoints / "step_4").exists()
    assert find_checkpoint("latest", checkpoints) == checkpoints / "step_2"
    run.resume_from = "latest"
    assert_same_run(run_classification(run, keep_model=True), whole)


def test_latest_skips_an_incomplete_newest_checkpoint_and_a_stray_folder_and_says_so(stopped, tmp_path, capsys):
    folder = copy_run(stopped, tmp_path)
    checkpoints = folder / "checkpoints"
    (checkpoints / "step_final").mkdir()  # a stray folder of another tool
    half = shutil.copytree(checkpoints / "step_1", checkpoints / "step_7")  # as an older version left a killed save
    (half / CHECKPOINT_MANIFEST).unlink()
    assert find_checkpoint("latest", checkpoints) == checkpoints / "step_1"
    err = capsys.readouterr().err
    assert "Skipped incomplete checkpoint" in err and "step_7" in err and "step_final" not in err


# ---------------------------------------------------------------------------------------------------------------------
# A resume (or a sweep's reuse) of another run is refused with the differences
# ---------------------------------------------------------------------------------------------------------------------


def test_resuming_with_other_settings_is_refused_with_every_difference(assets, stopped, tmp_path):
    folder = copy_run(stopped, tmp_path)
    other = make_reviews_csv(tmp_path / "other.csv", count=40, seed=3)
    run = tiny_run(assets, folder, max_steps=3, encoding="rope", learning_rate=2e-3, dataset=str(other))
    run.resume_from = "latest"
    with pytest.raises(ValueError, match="belongs to a different run") as caught:
        run_classification(run)
    message = str(caught.value)
    for expected in ("encoding: 'alibi' -> 'rope'", "learning_rate: 0.001 -> 0.002", "max_steps: 2 -> 3", "dataset"):
        assert expected in message
    assert "stop_after" not in message and "resume_from" not in message  # the allow-list


def test_cli_resume_with_another_encoding_exits_2_with_one_line(assets, stopped, tmp_path, capsys):
    folder = copy_run(stopped, tmp_path)
    run = tiny_run(assets, folder, max_steps=2)
    assert cli.main(cli_args(run, encoding="rope", resume_from="latest")) == 2
    captured = capsys.readouterr()
    assert "encoding: 'alibi' -> 'rope'" in error_line(captured.err)
    assert not (folder / "results.md").exists()


def test_a_moved_run_folder_resumes_with_progress_and_cadence_changed(assets, stopped, tmp_path):
    folder = copy_run(stopped, tmp_path)  # output_dir differs from the saved one
    run = tiny_run(assets, folder, max_steps=2, resume_from="latest", checkpoint_every=1, progress=True)
    resumed = run_classification(run)
    assert resumed["train"]["completed_steps"] == 2 and len(resumed["train"]["losses"]) == 2
    assert (folder / "checkpoints" / "step_2" / CHECKPOINT_MANIFEST).is_file() and "metrics" in resumed


def test_settings_differences_ignores_only_the_allow_list():
    saved = RunConfig().to_dict()
    requested = {**saved, "output_dir": "moved", "stop_after": 3, "resume_from": "latest", "progress": False}
    assert settings_differences(saved, requested) == []
    assert settings_differences(saved, {**requested, "seed": 1}) == ["seed: 0 -> 1"]
    assert settings_differences({**saved, "new_field": 1}, saved) == ["new_field: 1 -> (absent)"]
    assert set(saved) >= RESUME_MAY_DIFFER  # every exception names a real field


def test_a_field_added_after_a_run_was_saved_compares_as_its_default():
    defaults = RunConfig.field_defaults()
    requested = RunConfig().to_dict()
    saved = {k: v for k, v in requested.items() if k != "absolute_init"}  # written before the field existed
    assert defaults["absolute_init"] == "copy" and defaults["eval_lengths"] == requested["eval_lengths"]
    assert settings_differences(saved, requested) == ["absolute_init: (absent) -> 'copy'"]
    assert settings_differences(saved, requested, defaults=defaults) == []
    other = {**requested, "absolute_init": "random"}
    assert settings_differences(saved, other, defaults=defaults) == ["absolute_init: 'copy' -> 'random'"]


def test_a_sweep_reuses_a_run_saved_before_a_field_existed_and_refuses_a_non_default(assets, tmp_path):
    base = {"model": str(assets["bert"]), "dataset": str(assets["reviews"]), "train_length": 16}
    base |= {"eval_lengths": [16], "max_steps": 1, "batch_size": 8, "progress": False}
    values = {"output_dir": str(tmp_path / "sweep"), "base": base, "variants": [{"encoding": "alibi"}]}
    values |= {"baseline": False}
    first = run_sweep(SweepConfig.from_dict(values))
    results = tmp_path / "sweep" / "runs" / "alibi_seed0" / "results.json"
    saved = json.loads(results.read_text())
    del saved["config"]["absolute_init"]
    results.write_text(json.dumps(saved))
    again = run_sweep(SweepConfig.from_dict({**values, "resume": True}))
    assert again["runs"][0]["timings"] == first["runs"][0]["timings"]
    changed = {**values, "resume": True, "base": {**base, "absolute_init": "random"}}
    with pytest.raises(ValueError, match=r"other settings .*absolute_init: 'copy' -> 'random'"):
        run_sweep(SweepConfig.from_dict(changed))


def test_a_sweep_refuses_to_reuse_a_finished_run_with_other_settings(assets, tmp_path):
    base = {"model": str(assets["bert"]), "dataset": str(assets["reviews"]), "train_length": 16}
    base |= {"eval_lengths": [16], "max_steps": 1, "batch_size": 8, "progress": False}
    values = {"output_dir": str(tmp_path / "sweep"), "base": base, "variants": [{"encoding": "alibi"}]}
    values["baseline"] = False
    first = run_sweep(SweepConfig.from_dict(values))
    values["resume"] = True  # reuse is asked for (without it the sweep refuses to start over finished runs)
    again = run_sweep(SweepConfig.from_dict(values))  # same settings: reused, not trained again
    assert again["runs"][0]["timings"] == first["runs"][0]["timings"]
    changed = {**values, "base": {**base, "learning_rate": 1e-3}}
    with pytest.raises(ValueError, match=r"other settings .*learning_rate: 5e-05 -> 0.001"):
        run_sweep(SweepConfig.from_dict(changed))
    results = tmp_path / "sweep" / "runs" / "alibi_seed0" / "results.json"
    results.write_text(results.read_text()[:50])
    with pytest.raises(ValueError, match=f"{results} is not valid JSON"):
        run_sweep(SweepConfig.from_dict(values))


# ---------------------------------------------------------------------------------------------------------------------
# stop_after: a clean stop that says how to resume, and no stale results
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_stop_after_in_a_fresh_folder_says_where_it_stopped(assets, tmp_path, capsys):
    run = tiny_run(assets, tmp_path / "fresh", max_steps=3)
    assert cli.main(cli_args(run, stop_after=2)) == 0
    out = capsys.readouterr().out
    assert "Stopped after step 2 of 3" in out and "--resume_from latest" in out
    assert str(tmp_path / "fresh" / "checkpoints" / "step_2") in out
    assert not (tmp_path / "fresh" / "results.md").exists()


def test_cli_stop_after_over_a_finished_run_prints_no_stale_results(assets, tmp_path, capsys):
    run = tiny_run(assets, tmp_path / "reused", max_steps=2, encoding="rope")
    assert cli.main(cli_args(run)) == 0
    assert "| accuracy |" in capsys.readouterr().out
    assert cli.main(cli_args(run, encoding="alibi", stop_after=1)) == 0
    out = capsys.readouterr().out
    assert "| accuracy |" not in out and "rope" not in out and "Stopped after step 1 of 2" in out
    assert not (tmp_path / "reused" / "results.md").exists()
    assert json.loads((tmp_path / "reused" / "results.json").read_text())["config"]["encoding"] == "alibi"


def test_stop_after_at_or_before_the_checkpoint_is_refused(assets, stopped, tmp_path):
    run = tiny_run(assets, copy_run(stopped, tmp_path), max_steps=2, stop_after=1)
    run.resume_from = "latest"
    with pytest.raises(ValueError, match="stop_after=1 is not after the checkpoint's step 1"):
        run_classification(run)


# ---------------------------------------------------------------------------------------------------------------------
# Damaged files: each kind the recipes read gives one clear error naming the file
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["optimizer.bin", "model.safetensors", "loop_state.json", "scheduler.bin"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped"])
def test_a_damaged_checkpoint_file_is_named(assets, stopped, tmp_path, capsys, name, damage):
    folder = copy_run(stopped, tmp_path)
    path = folder / "checkpoints" / "step_1" / name
    data = path.read_bytes()
    changed = {"truncated": data[: len(data) // 2], "empty": b"", "flipped": data[:-8] + bytes(8)}[damage]
    assert changed != data
    path.write_bytes(changed)
    run = tiny_run(assets, folder, max_steps=2)
    assert cli.main(cli_args(run, resume_from="latest")) == 2
    err = error_line(capsys.readouterr().err)
    assert str(path) in err and "--resume_from" in err


def test_a_checkpoint_without_its_manifest_or_loop_state_is_a_clear_error(assets, stopped, tmp_path):
    folder = copy_run(stopped, tmp_path)
    step = folder / "checkpoints" / "step_1"
    (step / CHECKPOINT_MANIFEST).unlink()
    run = tiny_run(assets, folder, max_steps=2, resume_from=str(step))
    with pytest.raises(ValueError, match=f"{step} is incomplete"):
        run_classification(run)
    (step / "loop_state.json").unlink()
    with pytest.raises(ValueError, match="not a checkpoint written by hf_posenc"):
        run_classification(run)
    with pytest.raises(FileNotFoundError, match=r"No checkpoint to resume from .*incomplete"):
        run_classification(tiny_run(assets, folder, max_steps=2, resume_from="latest"))


def test_a_damaged_results_file_is_named_by_report(tmp_path, capsys):
    path = tmp_path / "results.json"
    for content in ("", '{"kind": "classification", "config": {'):
        path.write_text(content)
        assert cli.main(["report", str(path)]) == 2
        assert str(path) in error_line(capsys.readouterr().err)


def test_a_damaged_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text('{"encoding": "rope",')
    assert cli.main(["train", "--config", str(config)]) == 2
    assert f"{config} is not valid JSON (line 1" in capsys.readouterr().err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("empty.csv", b"", "is empty"),
        ("header.csv", b"text,label\n", "has a header"),
        ("latin.csv", "text,label\ncaf\u00e9 good,pos\nok,neg\n".encode("latin-1"), "is not UTF-8 text (line 2"),
        ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n', "line 2 is not valid JSON"),
        ("bad.json", b'[{"text": "a", "label": "x"},\n{"text": "b" "label": "y"}]\n', "line 2 is not valid JSON"),
    ],
)
def test_cli_train_on_an_unreadable_data_file_names_it(assets, tmp_path, capsys, name, data, expected):
    path = _write(tmp_path / name, data)
    run = tiny_run(assets, tmp_path / "run", max_steps=1, dataset=str(path))
    assert cli.main(cli_args(run)) == 2
    err = error_line(capsys.readouterr().err)
    assert str(path) in err and expected in err


# ---------------------------------------------------------------------------------------------------------------------
# Incomplete rows and settings that cannot train
# ---------------------------------------------------------------------------------------------------------------------


def test_rows_without_text_or_label_are_dropped_with_a_warning_that_counts_them(tmp_path):
    path = tmp_path / "holes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(60):
            text = "" if index % 3 == 0 else ("   " if index == 1 else f"w{index} good")
            writer.writerow([text, "" if index == 2 else ("pos" if index % 2 else "neg")])
    with pytest.warns(UserWarning, match=r"Dropped 22 of 60 rows .*21 with an empty text \(rows 1, 2, 4,.*"):
        data = load_text_classification(path, test_size=0.25)
    assert len(data["train"]) + len(data["test"]) == 38
    assert all(text.strip() for split in data.values() for text in split["text"])


def test_a_dataset_with_no_complete_row_is_an_error(tmp_path):
    path = _write(tmp_path / "blank.csv", b"text,label\n,pos\n  ,neg\n")
    with pytest.raises(ValueError, match="Every row of the train split .* has an empty text or no label"):
        load_text_classification(path)


def test_running_text_drops_empty_paragraphs_quietly(tmp_path, recwarn):
    path = _write(tmp_path / "text.csv", b"text\none two three\n\n   \nfour five\n")
    assert list(load_running_text(path)["text"]) == ["one two three", "four five"]
    assert not [w for w in recwarn if "Dropped" in str(w.message)]


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("max_steps", -1, ValueError),
        ("max_steps", 0, ValueError),
        ("epochs", 0, ValueError),
        ("batch_size", 0, ValueError),
        ("gradient_accumulation_steps", 0, ValueError),
        ("stop_after", 0, ValueError),
        ("checkpoint_every", -2, ValueError),
        ("train_length", 0, ValueError),
        ("eval_lengths", [], ValueError),
        ("eval_lengths", [16, -1], ValueError),
        ("learning_rate", 0.0, ValueError),
        ("learning_rate", "fast", TypeError),
        ("warmup_ratio", 1.0, ValueError),
        ("weight_decay", -0.1, ValueError),
        ("seed", -1, ValueError),
        ("max_train_examples", 0, ValueError),
        ("mlm_steps", -5, ValueError),
        ("mlm_probability", 0.0, ValueError),
        ("test_size", 1.5, ValueError),
        ("mixed_precision", "fp12", ValueError),
        ("batch_size", True, TypeError),
        ("batch_size", 2.5, TypeError),
    ],
)
def test_settings_that_cannot_train_are_refused_naming_the_field(field, value, error):
    with pytest.raises(error, match=field):
        RunConfig.from_dict({field: value})


def test_seq2seq_settings_are_validated_too():
    with pytest.raises(ValueError, match="eval_batch_size"):
        Seq2SeqConfig.from_dict({"eval_batch_size": 0})
    with pytest.raises(ValueError, match="max_steps"):
        SweepConfig.from_dict({"base": {"max_steps": -1}, "variants": [{"encoding": "alibi"}]})


def test_cli_max_steps_minus_one_exits_2_before_anything_runs(assets, tmp_path, capsys):
    run = tiny_run(assets, tmp_path / "neg", max_steps=1)
    assert cli.main(cli_args(run, max_steps=-1)) == 2
    assert "max_steps must be at least 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()


def test_settings_changed_after_construction_are_checked_before_training(assets, tmp_path):
    run = tiny_run(assets, tmp_path / "late", max_steps=1)
    run.batch_size = 0
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        run_classification(run)


# ---------------------------------------------------------------------------------------------------------------------
# The atomic file helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "deep" / "results.md", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["results.md"]
    atomic_write(path, b"new")
    assert path.read_text() == "new"


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "step_2"
    with atomic_path(target, folder=True) as temporary:
        (temporary / "a").write_text("1")
        (temporary / "b").write_text("2")
    replacement = tmp_path / "new"
    replacement.mkdir()
    (replacement / "c").write_text("3")
    publish_folder(replacement, target)
    assert sorted(p.name for p in target.iterdir()) == ["c"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "step_2"
    ]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_atomic_files_and_folders_get_the_permissions_a_plain_write_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        plain_file, plain_folder = tmp_path / "plain.md", tmp_path / "plain"
        plain_file.write_text("x")
        plain_folder.mkdir()
        written = atomic_write(tmp_path / "results.md", "x")
        with atomic_path(tmp_path / "step_2", folder=True) as temporary:
            (temporary / "a").write_text("1")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain_file.stat().st_mode) == 0o666 & ~umask
    folder_mode = stat.S_IMODE((tmp_path / "step_2").stat().st_mode)
    assert folder_mode == stat.S_IMODE(plain_folder.stat().st_mode) == 0o777 & ~umask


def test_read_json_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(FileNotFoundError, match=f"No such file: {path}. Run it again."):
        read_json(path, "Run it again.")
    for content, message in ((b"", "is empty"), (b"\xff{}", "is not UTF-8"), (b'{"a": 1,\n', "line 2")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_json(path)
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}
