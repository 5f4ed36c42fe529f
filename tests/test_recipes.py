"""The recipes end to end on tiny models and fixture data: results files, exact resume, chaining, bad inputs.

Everything here is built locally (a 2-layer BERT with hidden size 32 and a WordPiece vocabulary over the fixture
words, CSV reviews, counting running text); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_fixtures import make_recipe_assets, make_reviews_csv, tiny_run_config

from hf_posenc import cli
from hf_posenc.recipes.classification import classification_dataloaders, load_adapted_encoder, run_classification
from hf_posenc.recipes.probes.run import ProbeConfig
from hf_posenc.recipes.settings import RunConfig, Seq2SeqConfig, Settings, SweepConfig, TrainingSettings
from hf_posenc.recipes.sweep import check_comparisons, run_sweep, study_sweeps

ROOT = Path(__file__).resolve().parent.parent


def load_recipe(name: str):
    """Import `recipes/<name>.py` as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return make_recipe_assets(tmp_path_factory.mktemp("recipes"))


def tiny_run(assets, tmp_path: Path, **overrides) -> RunConfig:
    values = dict(train_length=32, eval_lengths=[16, 32, 64, 128], epochs=1)
    return tiny_run_config(assets, tmp_path / "run", **{**values, **overrides})


# ---------------------------------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_train_writes_results_with_spec_versions_and_metrics_per_length(assets, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--model", str(assets["bert"]), "--dataset", str(assets["reviews"]), "--encoding", "rope"]
    argv += ["--encoding_options", '{"base": 500}', "--train_length", "32", "--eval_lengths", "16", "64", "128"]
    argv += ["--epochs", "1", "--batch_size", "8", "--seed", "3", "--output_dir", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["patch_spec"]["stacks"]["encoder"]["encoding"] == "rope"
    assert results["patch_spec"]["stacks"]["encoder"]["options"]["base"] == 500
    assert results["config"]["seed"] == 3 and results["config"]["train_length"] == 32
    environment = results["environment"]
    assert environment["torch"] == torch.__version__ and environment["transformers"]
    assert environment["git_revision"] is None or len(environment["git_revision"].split("-")[0]) == 40
    assert set(results["metrics"]) == {"16", "64", "128"}
    test_examples = results["data"]["test_examples"]
    assert test_examples == 16  # 20% of the 80 fixture reviews
    for metrics in results["metrics"].values():
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
        assert metrics["n"] == test_examples and metrics["seconds"] >= 0  # rounded to 0.01 s: tiny runs can read 0.0
    assert results["train"]["completed_steps"] == 8 and len(results["train"]["losses"]) == 8
    assert results["timings"]["total_seconds"] > 0
    # What the model card reads without importing the recipes: a local dataset is described by its path alone.
    assert results["dataset_info"] == {
        "name": str(assets["reviews"]),
        "citation": None,
        "license": None,
        "source": None,
    }
    assert results["base_model"] == str(assets["bert"])
    table = (out / "results.md").read_text()
    assert "| accuracy | 16 | 64 | 128 |" in table and "| macro_f1 |" in table
    assert "| accuracy | 16 | 64 | 128 |" in capsys.readouterr().out


def test_recipe_seam_replaces_the_data_and_runs_in_bf16(assets, tmp_path, monkeypatch):
    recipe = load_recipe("classification")
    calls = []

    def fixture_loaders(run, tokenizer):
        calls.append(run.dataset)
        train, evals, facts = classification_dataloaders(run, tokenizer)
        return train, {16: evals[16]}, {**facts, "source": "fixture seam"}

    monkeypatch.setattr(recipe, "get_dataloaders", fixture_loaders)
    argv = ["--model", str(assets["bert"]), "--dataset", str(assets["reviews"]), "--encoding", "t5"]
    argv += ["--train_length", "16", "--eval_lengths", "16", "--max_steps", "2", "--batch_size", "4"]
    argv += ["--mixed_precision", "bf16", "--output_dir", str(tmp_path / "seam"), "--no-progress"]
    results = recipe.main(argv)
    assert calls == [str(assets["reviews"])]
    assert results["data"]["source"] == "fixture seam" and list(results["metrics"]) == ["16"]
    assert results["environment"]["mixed_precision"] == "bf16"
    assert results["train"]["completed_steps"] == 2


def test_report_re_renders_a_results_file(assets, tmp_path):
    run = tiny_run(assets, tmp_path, max_steps=1, eval_lengths=[16, 32])
    run_classification(run)
    table = Path(run.output_dir) / "results.md"
    table.unlink()
    assert cli.main(["report", str(Path(run.output_dir) / "results.json")]) == 0
    assert "| accuracy | 16 | 32 |" in table.read_text()


def test_fine_tuning_learns_the_fixture_task_and_uses_longer_inputs(assets, tmp_path):
    # The fixture's sentiment words are scattered through each review, so a model that learned them and reads
    # more of a review should do better on the same reviews at 128 tokens than at 16. Mean-pooling head, ALiBi.
    data = make_reviews_csv(tmp_path / "more.csv", count=160, seed=5)
    run = tiny_run(assets, tmp_path, dataset=str(data), pooling="mean", train_length=64, eval_lengths=[8, 128])
    run.epochs, run.batch_size, run.learning_rate = 5, 16, 5e-3
    results = run_classification(run)
    losses = results["train"]["losses"]
    assert sum(losses[-5:]) / 5 < 0.4 < losses[0]
    assert results["metrics"]["128"]["accuracy"] >= 0.9
    assert results["metrics"]["128"]["accuracy"] > results["metrics"]["8"]["accuracy"]


def test_unknown_pooling_is_refused(assets, tmp_path):
    with pytest.raises(ValueError, match=r"pooling must be one of \('cls', 'mean'\)"):
        run_classification(tiny_run(assets, tmp_path, pooling="max"))


# ---------------------------------------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augmentation", ["none", "pose", "randomized"])
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(assets, tmp_path, augmentation):
    # 64 training reviews, batch 8, accumulation 2: 4 optimizer steps per epoch. The run stops after step 3 (mid
    # epoch, with a checkpoint: the simulated kill) and resumes into the second epoch. Dropout is on, so the RNG
    # state must be restored too; with position augmentation, the resumed batches must get the same position ids.
    common = dict(max_steps=6, gradient_accumulation_steps=2, eval_lengths=[16, 64], learning_rate=5e-3)
    common["position_augmentation"] = augmentation
    whole = run_classification(tiny_run(assets, tmp_path / "whole", **common), keep_model=True)
    killed = tiny_run(assets, tmp_path / "killed", stop_after=3, **common)
    stopped = run_classification(killed)
    assert stopped["train"]["stopped_early"] and "metrics" not in stopped
    assert (Path(killed.output_dir) / "checkpoints" / "step_3" / "loop_state.json").is_file()
    killed.stop_after, killed.resume_from = None, "latest"
    resumed = run_classification(killed, keep_model=True)
    assert resumed["train"]["completed_steps"] == whole["train"]["completed_steps"] == 6
    assert resumed["train"]["losses"] == whole["train"]["losses"]
    assert _scores(resumed) == _scores(whole)
    expected, found = whole["model"].state_dict(), resumed["model"].state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert not torch.equal(expected["classifier.weight"], _fresh_classifier_weight(assets))


def _scores(results: dict) -> dict:
    return {n: (m["accuracy"], m["macro_f1"], m["n"]) for n, m in results["metrics"].items()}


def _fresh_classifier_weight(assets) -> torch.Tensor:
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification

    set_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(assets["bert"], num_labels=2).classifier.weight


def test_resume_without_a_checkpoint_is_a_clear_error(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint to resume from"):
        run_classification(tiny_run(assets, tmp_path, resume_from="latest", max_steps=1))


# ---------------------------------------------------------------------------------------------------------------------
# MLM adaptation, chained with the task
# ---------------------------------------------------------------------------------------------------------------------


def test_mlm_adaptation_learns_and_chains_into_classification(assets, tmp_path):
    run = tiny_run(
        assets,
        tmp_path,
        encoding="learned",
        max_length=128,
        max_steps=2,
        mlm_steps=20,
        mlm_dataset=str(assets["running"]),
        mlm_length=32,
        mlm_batch_size=8,
        mlm_learning_rate=1e-2,
        mlm_eval_lengths=[32, 128],
    )
    results = run_classification(run, keep_model=True)
    mlm = results["mlm"]
    assert mlm["train"]["completed_steps"] == 20
    for length in ("32", "128"):
        assert mlm["after"][length]["masked_tokens"] > 0
        # A random tiny model starts at ln(91 words) = 4.51; learning the word frequencies alone reaches ln(70) = 4.25.
        assert mlm["after"][length]["mlm_loss"] < mlm["before"][length]["mlm_loss"] - 0.1
    assert set(results["metrics"]) == {"16", "32", "64", "128"}
    assert results["patch_spec"]["stacks"]["encoder"]["max_length"] == 128


def test_masked_positions_head_gives_the_full_models_loss(assets):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from hf_posenc.recipes.mlm import MaskedPositionsMLM, mask_tokens

    model = AutoModelForMaskedLM.from_pretrained(assets["bert"]).eval()
    wrapped = MaskedPositionsMLM(model)
    assert wrapped.head is model.cls
    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    ids = torch.randint(5, len(tokenizer), (3, 24), generator=torch.Generator().manual_seed(0))
    masked, labels = mask_tokens(ids, tokenizer, 0.3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=masked, labels=labels).loss
        found = wrapped(input_ids=masked, labels=labels)
    torch.testing.assert_close(found.loss, expected, rtol=1e-5, atol=1e-6)
    assert found.logits.shape == ((labels != -100).sum().item(), len(tokenizer))


def test_adapted_encoder_must_fit_the_classifier(assets):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(assets["bert"], num_labels=2)
    state = {k: v for k, v in model.base_model.state_dict().items() if not k.startswith("pooler.")}
    load_adapted_encoder(model, state)  # the pooler may be missing (MLM models have none)
    state.pop("embeddings.word_embeddings.weight")
    with pytest.raises(ValueError, match="does not fit the classifier"):
        load_adapted_encoder(model, state)


def test_mlm_recipe_alone_reports_loss_and_accuracy_per_length(assets, tmp_path):
    recipe = load_recipe("mlm_adaptation")
    argv = ["--model", str(assets["bert"]), "--encoding", "alibi", "--mlm_steps", "3", "--mlm_length", "32"]
    argv += ["--mlm_dataset", str(assets["running"]), "--mlm_eval_lengths", "32", "64", "--mlm_batch_size", "4"]
    argv += ["--output_dir", str(tmp_path / "mlm"), "--no-progress"]
    results = recipe.main(argv)
    assert results["kind"] == "mlm" and set(results["mlm"]["after"]) == {"32", "64"}
    assert "| mlm_accuracy | 32 | 64 |" in (tmp_path / "mlm" / "results.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Sweep, baseline and plot; seq2seq
# ---------------------------------------------------------------------------------------------------------------------


def test_sweep_aggregates_seeds_adds_the_baseline_and_draws_the_plot(assets, tmp_path):
    pytest.importorskip("sklearn")
    sweep = SweepConfig.from_dict(
        {
            "name": "tiny sweep",
            "output_dir": str(tmp_path / "sweep"),
            "base": tiny_run(assets, tmp_path, max_steps=2, eval_lengths=[16, 64]).to_dict(),
            "variants": [{"encoding": "alibi"}, {"encoding": "learned", "label": "stock", "pooling": "mean"}],
            "seeds": [0, 1],
        }
    )
    order = [(run.variant, run.seed) for run in sweep.runs()]
    assert order == [("alibi", 0), ("stock", 0), ("alibi", 1), ("stock", 1)]  # seed-major
    summary = run_sweep(sweep)
    assert set(summary["summary"]) == {"alibi", "stock"}
    assert len(summary["summary"]["alibi"]["16"]["accuracy"]) == 2
    baseline = summary["baseline"]
    assert set(baseline) == {"TF-IDF+LR (train full)", "TF-IDF+LR (train @32)"}
    assert set(baseline["TF-IDF+LR (train full)"]) == {"16", "64", "full"}
    # The fixture's sentiment words are strong cues: on full texts the baseline must beat chance clearly.
    assert baseline["TF-IDF+LR (train full)"]["full"]["accuracy"] >= 0.75
    folder = Path(sweep.output_dir)
    assert (folder / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / "results.md").read_text()
    assert "| accuracy | 16 | 64 | full |" in table and "±" in table and "TF-IDF+LR (train full)" in table
    first = folder / "runs" / "alibi_seed0" / "results.json"
    stamp = first.stat().st_mtime_ns
    again = run_sweep(dataclasses.replace(sweep, resume=True))  # finished runs are reused (only when asked)
    assert first.stat().st_mtime_ns == stamp and again["summary"] == summary["summary"]


def test_seq2seq_recipe_marks_results_as_not_pretrained_bart(assets, tmp_path):
    recipe = load_recipe("seq2seq")
    argv = ["--encodings", "learned", "alibi", "--tokenizer", str(assets["bert"]), "--no-warm_start"]
    argv += ["--text_dataset", str(assets["running"]), "--d_model", "32", "--heads", "4", "--ffn_dim", "64"]
    argv += ["--train_length", "8", "--eval_lengths", "8", "16", "--train_examples", "32", "--eval_examples", "4"]
    argv += ["--batch_size", "8", "--output_dir", str(tmp_path / "s2s"), "--no-progress"]
    summary = recipe.main(argv)
    assert set(summary["summary"]) == {"learned", "alibi"}
    for run in summary["runs"]:
        assert "NOT pretrained BART" in run["note"]
        assert set(run["metrics"]) == {"8", "16"}
        assert {"loss", "token_accuracy", "exact_match"} <= set(run["metrics"]["8"])
        assert set(run["patch_spec"]["stacks"]) == {"encoder", "decoder"}
    assert "NOT pretrained BART" in (tmp_path / "s2s" / "results.md").read_text()
    assert (tmp_path / "s2s" / "results.png").is_file()


def test_seq2seq_task_from_a_local_file(assets, tmp_path):
    from hf_posenc.recipes.seq2seq import run_seq2seq

    pairs = tmp_path / "pairs.csv"
    words = [f"w{i}" for i in range(40)]
    rows = [f'"{" ".join(words[i : i + 12])}","{" ".join(words[i : i + 3])}"' for i in range(24)]
    pairs.write_text("document,summary\n" + "\n".join(rows) + "\n")
    run = Seq2SeqConfig(
        task=str(pairs),
        tokenizer=str(assets["bert"]),
        warm_start=False,
        d_model=32,
        heads=4,
        ffn_dim=64,
        encoding="t5",
        train_length=8,
        eval_lengths=[4, 12],
        max_target_length=4,
        train_examples=16,
        eval_examples=4,
        max_steps=2,
        batch_size=4,
        generate=False,
        output_dir=str(tmp_path / "file"),
        progress=False,
    )
    results = run_seq2seq(run)
    assert results["pretrained_bart"] is False and set(results["metrics"]) == {"4", "12"}
    with pytest.raises(ValueError, match="no column 'text'"):
        run_seq2seq(Seq2SeqConfig(**{**run.to_dict(), "source_column": "text"}))


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs fail clearly, before training
# ---------------------------------------------------------------------------------------------------------------------


def test_lengths_past_a_learned_table_fail_before_data_or_training(assets, tmp_path):
    def never(run, tokenizer):
        raise AssertionError("data was loaded before the length check")

    run = tiny_run(assets, tmp_path, encoding="learned", eval_lengths=[32, 128])
    with pytest.raises(ValueError, match=r"Lengths \[128\] exceed the 64 positions.*max_length=128.*alibi"):
        run_classification(run, get_dataloaders=never)
    sweep = SweepConfig.from_dict(
        {
            "output_dir": str(tmp_path / "s"),
            "base": run.to_dict(),
            "variants": [{"encoding": "alibi"}, {"encoding": "learned"}],
        }
    )
    with pytest.raises(ValueError, match="exceed the 64 positions"):
        run_sweep(sweep, get_dataloaders=never)  # refused before the alibi run trains
    assert not (tmp_path / "s" / "runs").exists()


def test_unknown_dataset_and_missing_columns_are_clear_errors(assets, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="no_such_dataset|not found|Unknown|does not exist"):
        run_classification(tiny_run(assets, tmp_path, dataset="no_such_dataset_xyz.csv"))
    renamed = make_reviews_csv(tmp_path / "renamed.csv", columns=("body", "label"))
    with pytest.raises(ValueError, match="text"):
        run_classification(tiny_run(assets, tmp_path, dataset=str(renamed)))
    with pytest.raises(ValueError, match="sentiment"):
        run_classification(tiny_run(assets, tmp_path, dataset=str(assets["reviews"]), label_column="sentiment"))


def test_labels_that_do_not_match_the_checkpoint_head_are_refused(assets, tmp_path):
    from transformers import AutoModelForSequenceClassification

    three = tmp_path / "three_labels"
    AutoModelForSequenceClassification.from_pretrained(assets["bert"], num_labels=3).save_pretrained(three)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (assets["bert"] / name).is_file():
            (three / name).write_bytes((assets["bert"] / name).read_bytes())
    with pytest.raises(ValueError, match="head has 3 labels.*dataset has 2"):
        run_classification(tiny_run(assets, tmp_path, model=str(three)))


def test_unknown_config_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown config key.*learning_rat.*Valid keys"):
        RunConfig.from_dict({"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="Unknown sweep key"):
        SweepConfig.from_dict({"variant": []})
    with pytest.raises(ValueError, match="Sweep kind"):
        SweepConfig.from_dict({"kind": "regression", "variants": [{"encoding": "alibi"}]})


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "recipes" / "configs").glob("*.json")):
        values = json.loads(path.read_text())
        if "methods" in values:  # a probe study: methods scored on synthetic retrieval, no training runs
            assert ProbeConfig.from_dict(values).methods, path
            continue
        for sweep in study_sweeps(values):  # a sweep file, or a study of several datasets
            assert sweep.runs(), path
            check_comparisons(sweep)  # every head-to-head row is a row of the sweep


# ---------------------------------------------------------------------------------------------------------------------
# Multi-process under accelerate launch
# ---------------------------------------------------------------------------------------------------------------------


def test_accelerate_launch_two_cpu_processes_gathers_every_test_example_once(assets, tmp_path):
    out = tmp_path / "launch"
    # accelerate 1.15 starts a single process for `--cpu --num_processes 2`; `--multi_gpu` on a machine without
    # GPUs starts two, which hf_posenc runs in Accelerate's multi-CPU (gloo) mode.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [str(ROOT / "recipes" / "classification.py"), "--model", str(assets["bert"]), "--encoding", "alibi"]
    command += ["--dataset", str(assets["reviews"]), "--train_length", "16", "--eval_lengths", "16", "32"]
    command += ["--epochs", "1", "--batch_size", "4", "--eval_tokens_per_batch", "96"]
    command += ["--output_dir", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["num_processes"] == 2
    assert results["train"]["num_processes"] == 2
    # One epoch is each process's half of the batches, and the schedule decays to zero at its last step, not halfway
    # (Accelerate steps the scheduler once per process).
    train = results["train"]
    per_process = math.ceil(math.ceil(results["data"]["train_examples"] / 4) / 2)
    assert train["total_steps"] == train["completed_steps"] == per_process == len(train["learning_rates"])
    assert train["learning_rates"][-1] == 0.0 and min(train["learning_rates"][:-1]) > 0.0
    # 16 test reviews in batches of 3 per process: gather_for_metrics must drop the padding duplicates.
    assert all(m["n"] == results["data"]["test_examples"] == 16 for m in results["metrics"].values())


# ---------------------------------------------------------------------------------------------------------------------
# Command lines: derived from the settings dataclasses
# ---------------------------------------------------------------------------------------------------------------------

RECIPE_SCRIPTS = ("classification", "mlm_adaptation", "seq2seq", "sweep", "study")


def recipe_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser a recipe user meets: `hf-posenc train / sweep / report` and the `recipes/*.py` scripts."""
    root = cli.build_parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices
    parsers = {f"hf-posenc {name}": commands[name] for name in ("train", "sweep", "report")}
    parsers.update({f"recipes/{name}.py": load_recipe(name).build_parser() for name in RECIPE_SCRIPTS})
    return parsers


def test_every_recipe_option_has_a_help_text_and_shows_its_default():
    for name, parser in recipe_parsers().items():
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        for action in parser._actions:
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, label
        parser.format_help()  # a stray "%" in a help text would only fail here


def test_config_file_sets_fields_and_flags_given_override_it(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"encoding": "t5", "train_length": 32, "seed": 5, "eval_lengths": [32, 64]}))
    recipe = load_recipe("classification")
    run = recipe.parse_args(["--config", str(config), "--seed", "0", "--encoding_options", '{"init": "zeros"}'])
    # a flag that repeats the default still overrides the file: only flags not given yield to it
    assert (run.encoding, run.train_length, run.seed, run.eval_lengths) == ("t5", 32, 0, [32, 64])
    assert run.encoding_options == {"init": "zeros"} and run.progress is True
    # the spellings of earlier versions keep working
    run = recipe.parse_args(["--no-progress", "--no-keep_absolute", "--mlm_eval_lengths", "32", "64"])
    assert run.progress is False and run.keep_absolute is False and run.mlm_eval_lengths == [32, 64]
    assert recipe.parse_args(["--no_progress", "--keep_absolute"]).keep_absolute is True
    run, encodings, seeds = load_recipe("seq2seq").parse_args(["--no-warm_start", "--encodings", "t5", "--seeds", "1"])
    assert run.warm_start is False and encodings == ["t5"] and seeds == [1]


def test_unknown_keys_in_a_config_file_are_refused_with_the_valid_names(tmp_path, capsys):
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({"learning_rat": 1e-3}))
    with pytest.raises(ValueError, match=r"typo.json: Unknown config key.*learning_rat.*Valid keys.*learning_rate"):
        load_recipe("classification").parse_args(["--config", str(config)])
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "Valid keys" in capsys.readouterr().err


def test_sweep_scripts_take_the_config_and_override_its_fields(tmp_path):
    shipped = ROOT / "recipes" / "configs" / "study_quick.json"
    sweep = load_recipe("sweep").parse_args(["--config", str(shipped), "--seeds", "3", "--output_dir", str(tmp_path)])
    assert sweep.seeds == [3] and sweep.output_dir == str(tmp_path)
    assert sweep.variants == SweepConfig.from_file(shipped).variants
    quick = ROOT / "recipes" / "configs" / "study_quick_v2.json"
    study = load_recipe("study").parse_args(["--quick", "--output_dir", str(tmp_path)])
    assert study.name == SweepConfig.from_file(quick).name and study.output_dir == str(tmp_path)


def test_settings_share_one_base():
    shared = {f.name for f in dataclasses.fields(TrainingSettings)}
    assert len(shared) >= 22
    assert shared <= {f.name for f in dataclasses.fields(RunConfig)}
    assert shared <= {f.name for f in dataclasses.fields(Seq2SeqConfig)}
    for cls in (RunConfig, Seq2SeqConfig, SweepConfig):
        assert issubclass(cls, Settings)
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    with pytest.raises(ValueError, match="Unknown seq2seq config key"):
        Seq2SeqConfig.from_dict({"pooling": "mean"})


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("hf_posenc.training", "RunConfig", "hf_posenc.recipes.settings"),
        ("hf_posenc.training", "run_classification", "hf_posenc.recipes.classification"),
        ("hf_posenc.reporting", "SweepConfig", "hf_posenc.recipes.settings"),
        ("hf_posenc.reporting", "run_sweep", "hf_posenc.recipes.sweep"),
        ("hf_posenc.data", "load_text_classification", "hf_posenc.recipes.data"),
    ],
)
def test_old_module_paths_warn_and_still_resolve(monkeypatch, old, name, new):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to hf_posenc.recipes"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_recipes_and_bench_import_hf_posenc_at_module_top_and_bench_never_imports_recipes():
    package = ROOT / "hf_posenc"
    for path in sorted([*(package / "recipes").glob("*.py"), *(package / "bench").glob("*.py")]):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    assert node.level == 0 and not (node.module or "").startswith("hf_posenc"), (path, node.lineno)
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("hf_posenc") for a in node.names), (path, node.lineno)
        if path.parent.name == "bench":
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    assert "recipes" not in (node.module or ""), (path, node.lineno)


def test_the_plot_without_predictions_draws_every_baseline_row(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from hf_posenc.recipes.results import plot

    drawn = []
    monkeypatch.setattr(plt, "close", lambda figure: drawn.append(figure))
    summary = {"learned": {"128": {"accuracy": [0.7, 0.72]}, "512": {"accuracy": [0.71, 0.7]}}}
    baseline = {f"TF-IDF ({n})": {"128": {"accuracy": 0.6}, "512": {"accuracy": 0.6 + n / 100}} for n in range(5)}
    plot(summary, [128, 512], 128, "accuracy", tmp_path / "results.png", baseline=baseline)
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert set(baseline) <= set(labels) and "learned" in labels and (tmp_path / "results.png").is_file()
