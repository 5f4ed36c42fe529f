"""The length-generalization study's machinery on tiny models and fixture data: intervals and paired differences
through the sweep (cases with known answers), reuse only under `resume`, the comparison with a reference from the
study entry point, several datasets seed-major, the length distribution and the long-document subset.

Runs are replaced by a stand-in runner whose predictions are fixed functions of the gold labels, so every interval
and difference has a known value; the data, tokenizer, TF-IDF baseline and rendering are the real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from recipe_fixtures import make_reviews_csv, make_tiny_bert

from hf_posenc.recipes.classification import classification_splits
from hf_posenc.recipes.results import length_distribution, markdown_length_table
from hf_posenc.recipes.settings import RunConfig, SweepConfig
from hf_posenc.recipes.sweep import (
    best_variant,
    describe_reproduction,
    document_subsets,
    document_table,
    evaluation_documents,
    reproduction,
    run_predictions,
    run_study,
    run_sweep,
    study_length_table,
    study_sweeps,
)

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("sklearn")


def load_study():
    spec = importlib.util.spec_from_file_location("recipe_study", ROOT / "recipes" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    return {
        "bert": make_tiny_bert(root / "bert"),
        "reviews": make_reviews_csv(root / "reviews.csv", count=100),
        "other": make_reviews_csv(root / "other.csv", count=60, seed=3),
    }


RULES = {
    "perfect": lambda labels, seed: labels,
    "wrong": lambda labels, seed: 1 - labels,
    "copy": lambda labels, seed: labels,
    # right on even positions only: accuracy 0.5 exactly whatever the labels
    "half": lambda labels, seed: np.where(np.arange(labels.size) % 2 == 0, labels, 1 - labels),
}


class FakeRunner:
    """Stands in for `run_classification`: predictions are a rule of the gold labels, stored as the recipe does
    (`{"document_index", "labels", "single": {length: predictions}}`, entries in reverse split order to exercise the
    reordering)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, run: RunConfig) -> dict:
        self.calls.append((run.variant, run.seed))
        labels = np.asarray(classification_splits(run)[1]["label"])
        found = RULES[run.variant](labels, run.seed)
        index = list(range(labels.size))[::-1]
        metrics = {str(n): {"accuracy": float((found == labels).mean()), "macro_f1": 0.0} for n in run.eval_lengths}
        results = {
            "kind": "classification",
            "variant": run.variant,
            "config": run.to_dict(),
            "metrics": metrics,
            "timings": {"total_seconds": 1.0},
            "predictions": {
                "document_index": index,
                "labels": [int(labels[i]) for i in index],
                "single": {str(n): [int(found[i]) for i in index] for n in run.eval_lengths},
            },
        }
        folder = Path(run.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results))
        return results


def sweep_dict(assets, folder: Path, variants=("perfect", "wrong", "copy"), seeds=(0, 1), **extra) -> dict:
    base = {
        "model": str(assets["bert"]),
        "dataset": str(assets["reviews"]),
        "encoding": "alibi",
        "train_length": 32,
        "eval_lengths": [16, 64],
        "progress": False,
    }
    values = {
        "name": "tiny study",
        "output_dir": str(folder),
        "base": base,
        "variants": [{"label": v, "encoding": "alibi"} for v in variants],
        "seeds": list(seeds),
        "baseline_variant": "perfect",
        "long_documents": 80,
        "n_resamples": 500,
    }
    return {**values, **extra}


def test_intervals_and_paired_differences_have_their_known_values(assets, tmp_path):
    sweep = SweepConfig.from_dict(sweep_dict(assets, tmp_path / "sweep"))
    summary = run_sweep(sweep, runner=FakeRunner())
    everything = summary["analysis"]["all"]
    n_docs = len(summary["documents"]["labels"])
    assert everything["n_docs"] == n_docs == 20  # 20% of 100 reviews
    intervals = everything["intervals"]["accuracy"]
    # Constant per-document outcomes: the bootstrap cannot move them.
    assert intervals["perfect"]["16"]["estimate"] == intervals["perfect"]["16"]["low"] == 1.0
    assert intervals["wrong"]["64"]["high"] == 0.0 and intervals["wrong"]["64"]["n_seeds"] == 2
    differences = everything["differences"]["accuracy"]
    assert set(differences) == {"wrong", "copy", "TF-IDF+LR (train full)", "TF-IDF+LR (train @32)"}
    wrong, copy = differences["wrong"]["16"], differences["copy"]["16"]
    assert wrong["estimate"] == wrong["low"] == wrong["high"] == -1.0 and wrong["paired_seeds"]
    assert copy["estimate"] == copy["low"] == copy["high"] == 0.0
    # The TF-IDF rows are deterministic one-seed rows, with their own predictions and intervals.
    tfidf = intervals["TF-IDF+LR (train full)"]["64"]
    expected = summary["baseline"]["TF-IDF+LR (train full)"]["64"]["accuracy"]
    assert tfidf["n_seeds"] == 1 and tfidf["estimate"] == pytest.approx(expected, abs=1e-4)
    assert tfidf["low"] <= tfidf["estimate"] <= tfidf["high"]
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "95% intervals: all (20 test documents)" in table
    assert "| wrong | -1.000 [-1.00, -1.00] * |" in table  # excludes zero: marked
    assert "| copy | +0.000 [+0.00, +0.00] |" in table  # does not: unmarked
    assert "| test documents | n | median tokens |" in table
    # The glance table comes first: the longest length's difference beside each row's intervals.
    assert table.index("## At a glance (20 test documents)") < table.index("| accuracy | 16 |")
    assert "| wrong | 0.000 [0.00, 0.00] | 0.000 [0.00, 0.00] | -1.000 [-1.00, -1.00] * |" in table
    assert (tmp_path / "sweep" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sweep" / "results_differences.png").read_bytes()[:4] == b"\x89PNG"


def test_a_baseline_row_with_other_documents_is_refused_not_paired(assets, tmp_path):
    summary = run_sweep(SweepConfig.from_dict(sweep_dict(assets, tmp_path / "sweep")), runner=FakeRunner())
    cell = summary["baseline"]["TF-IDF+LR (train full)"]["64"]
    table, _ = document_table(summary)
    assert np.array_equal(table["TF-IDF+LR (train full)"][64][0], cell["predictions"])
    cell["predictions"] = cell["predictions"][:-1]
    with pytest.raises(ValueError, match="stored 19 predictions for 20 test documents"):
        document_table(summary)
    # A row drawn per seed: every seed's predictions must cover the documents.
    full = cell["predictions"] + [0]
    summary["baseline"]["TF-IDF+LR (train full)"]["64"] = {**cell, "seeds": [0, 1], "predictions": [full, full[:-1]]}
    with pytest.raises(ValueError, match="stored 19 or 20 predictions for 20 test documents"):
        document_table(summary)


def test_long_document_subset_is_reported_separately(assets, tmp_path):
    sweep = SweepConfig.from_dict(sweep_dict(assets, tmp_path / "sweep", variants=("perfect", "half"), seeds=(0,)))
    summary = run_sweep(sweep, runner=FakeRunner())
    n_tokens = summary["documents"]["n_tokens"]
    long = [i for i, n in enumerate(n_tokens) if n > 80]
    assert 2 <= len(long) < len(n_tokens)  # the fixture has both
    entry = summary["analysis"]["over 80 tokens"]
    assert entry["n_docs"] == len(long)
    # "half" is right exactly on even split positions: its accuracy on the subset is the share of even positions.
    expected = np.mean([i % 2 == 0 for i in long])
    assert entry["intervals"]["accuracy"]["half"]["16"]["estimate"] == pytest.approx(expected)
    assert (
        f"95% intervals: over 80 tokens ({len(long)} test documents)"
        in (tmp_path / "sweep" / "results.md").read_text()
    )
    assert (tmp_path / "sweep" / "results_long.png").is_file()
    assert (tmp_path / "sweep" / "results_long_differences.png").is_file()


def test_document_subsets_select_documents_over_the_threshold():
    summary = {"documents": {"labels": [0] * 5, "n_tokens": [10, 600, 512, 513, 2000]}}
    assert document_subsets(summary, 512) == {"all": None, "over 512 tokens": [1, 3, 4]}
    assert document_subsets(summary, 0) == {"all": None}


def test_length_distribution_of_a_fixture():
    found = length_distribution([100, 200, 600, 1100, 3000])
    assert found == {"n": 5, "median": 600.0, "p90": 2240.0, "max": 3000, "over_512": 0.6, "over_1024": 0.4}
    table = markdown_length_table({"fixture": found})
    assert "| fixture | 5 | 600 | 2240 | 3000 | 60% | 40% |" in table
    with pytest.raises(ValueError, match="non-empty"):
        length_distribution([])


def test_finished_runs_are_reused_only_with_resume(assets, tmp_path, capsys):
    values = sweep_dict(assets, tmp_path / "sweep", variants=("perfect", "wrong"), seeds=(0,))
    runner = FakeRunner()
    first = run_sweep(SweepConfig.from_dict(values), runner=runner)
    assert len(runner.calls) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(SweepConfig.from_dict(values), runner=runner)  # refused before anything runs
    assert len(runner.calls) == 2
    capsys.readouterr()
    again = run_sweep(SweepConfig.from_dict({**values, "resume": True}), runner=runner)
    assert len(runner.calls) == 2 and again["summary"] == first["summary"]
    printed = capsys.readouterr().out
    assert "[1/2] perfect seed 0: reused" in printed and "[2/2] wrong seed 0: reused" in printed
    # A finished run whose recorded settings differ from the sweep's is refused even under resume, naming the field.
    changed = {**values, "resume": True, "base": {**values["base"], "eval_lengths": [16]}}
    with pytest.raises(ValueError, match="eval_lengths"):
        run_sweep(SweepConfig.from_dict(changed), runner=runner)
    assert len(runner.calls) == 2


def test_study_entry_point_compares_with_a_reference(assets, tmp_path, monkeypatch, capsys):
    study = load_study()
    runner = FakeRunner()
    monkeypatch.setattr(study, "run_study", lambda sweeps: run_study(sweeps, runner=runner))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(sweep_dict(assets, tmp_path / "unused", variants=("perfect", "half"), seeds=(0,))))
    reference = tmp_path / "reference"
    study.main(["--config", str(config), "--output_dir", str(reference), "--no_compare"])
    [fresh] = study.main(
        [
            "--config",
            str(config),
            "--output_dir",
            str(tmp_path / "fresh"),
            "--reference",
            str(reference / "results.json"),
        ]
    )
    text = (tmp_path / "fresh" / "comparison.md").read_text()
    assert "AGREES with" in text and "0 differ" in text and "exactly" in text
    assert "AGREES with" in capsys.readouterr().out
    # A reference whose "half" row read every document right: the paired bootstrap calls the drop a difference.
    changed = json.loads((reference / "results.json").read_text())
    for run in changed["runs"]:
        if run["variant"] == "half":
            run["predictions"]["single"] = {n: list(run["predictions"]["labels"]) for n in ("16", "64")}
    changed["summary"]["half"] = {n: {"accuracy": [1.0], "macro_f1": [1.0]} for n in ("16", "64")}
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert study.compare(fresh, tmp_path / "changed.json", tmp_path / "fresh") is False
    text = (tmp_path / "fresh" / "comparison.md").read_text()
    assert "DIFFERS from" in text and "half@16 0.50 vs 1.00" in text and "half@64" in text
    assert study.compare(fresh, tmp_path / "missing.json", tmp_path / "fresh") is None


def test_study_default_output_is_a_fresh_folder_not_the_reference():
    study = load_study()
    sweeps, args = study.parse_study(["--quick"])
    folder = Path(sweeps[0].output_dir)
    assert folder.parts[:2] == ("outputs", "study_quick_v2") and not sweeps[0].resume
    assert "recipes/results" not in str(folder)


def test_a_study_of_two_datasets_runs_seed_major_and_resumes(assets, tmp_path):
    values = sweep_dict(assets, tmp_path, variants=("perfect", "half"), seeds=(0, 1))
    values.pop("output_dir")
    study = {
        "name": "tiny",
        "output_dir": str(tmp_path / "study"),
        "sweep": values,
        "datasets": {
            "a": {"dataset": str(assets["reviews"])},
            "b": {"dataset": str(assets["other"]), "long_documents": 0},
        },
    }
    sweeps = study_sweeps(study)
    assert [Path(s.output_dir).name for s in sweeps] == ["a", "b"] and sweeps[1].long_documents == 0
    runner, finished, seeds_done = FakeRunner(), [], []
    summaries = run_study(
        sweeps,
        runner=runner,
        on_run_finished=lambda run, results: finished.append(Path(run.output_dir).relative_to(tmp_path / "study")),
        on_seed_finished=lambda done: seeds_done.append(len(done)),
    )
    assert [str(p) for p in finished] == [
        "a/runs/perfect_seed0", "a/runs/half_seed0", "b/runs/perfect_seed0", "b/runs/half_seed0",
        "a/runs/perfect_seed1", "a/runs/half_seed1", "b/runs/perfect_seed1", "b/runs/half_seed1",
    ]  # fmt: skip
    assert seeds_done == [2, 2] and len(runner.calls) == 8
    assert "over 80 tokens" in summaries[0]["analysis"] and list(summaries[1]["analysis"]) == ["all"]
    with pytest.raises(FileExistsError):
        run_study(study_sweeps(study), runner=runner)
    run_study(study_sweeps(study, {"resume": True}), runner=runner)
    assert len(runner.calls) == 8
    assert best_variant(summaries[0]) == "perfect"
    table = study_length_table(summaries)
    assert "| a | 20 |" in table and "| b | 12 |" in table  # one row per dataset's test split


def test_run_predictions_read_the_recipe_format_in_split_order():
    result = {
        "config": {"eval_mode": "chunked"},
        "predictions": {"document_index": [2, 0, 1], "labels": [1, 0, 1], "single": {"16": [0, 0, 0]},
                        "chunked": {"16": [1, 0, 0]}},
    }  # fmt: skip
    assert run_predictions(result) == {"16": [0, 0, 1]}
    assert run_predictions({"config": {}, "metrics": {}}) is None


def test_evaluation_documents_follow_the_test_split(assets, tmp_path):
    from transformers import AutoTokenizer

    run = RunConfig.from_dict({"model": str(assets["bert"]), "dataset": str(assets["reviews"]), "encoding": "alibi"})
    documents = evaluation_documents(run, AutoTokenizer.from_pretrained(assets["bert"]))
    test = classification_splits(run)[1]
    assert documents["labels"] == list(test["label"])
    assert documents["n_tokens"] == [len(text.split()) for text in test["text"]]  # one fixture word is one token


def test_best_variant_is_saved_with_its_model_card(assets, tmp_path, capsys):
    from hf_posenc.recipes.sweep import export_best_variant

    values = sweep_dict(assets, tmp_path / "sweep", variants=("perfect", "wrong"), seeds=(0,))
    summary = run_sweep(SweepConfig.from_dict(values), runner=FakeRunner())
    # The stand-in rows carry labels; the export retrains the best one for real (two steps of the tiny model).
    for run in summary["runs"]:
        run["config"]["max_steps"] = 2
    exported = export_best_variant(summary, tmp_path / "card", repo_id="someone/tiny-alibi")
    assert exported["variant"] == "perfect"
    folder = Path(exported["folder"])
    assert (folder / "README.md").is_file() and (folder / "config.json").is_file()
    assert "alibi" in (folder / "README.md").read_text().lower()
    assert "someone/tiny-alibi" in capsys.readouterr().out  # the dry run says what it would upload
    listing = (tmp_path / "card" / "checkpoint_files.md").read_text()
    weights = folder / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"| `model.safetensors` | {weights.stat().st_size:,} | `{digest}` |" in listing
    assert all(f"`{p.name}`" in listing for p in folder.iterdir() if p.is_file())
    # The stand-in row's labels are not what the tiny model predicts: the listing and the log say where they differ.
    agreement = exported["reproduction"]
    assert set(agreement) == set(exported["results"]["metrics"]) and "## Retrained against the study's run" in listing
    assert all(cell["retrained"] == exported["results"]["metrics"][n]["accuracy"] for n, cell in agreement.items())
    same = [cell["same_predictions"] for cell in agreement.values()]
    assert ("other predictions than the recorded run" in listing) == (same != [1.0] * len(same))


def test_reproduction_compares_predictions_per_length():
    def result(predictions: dict[str, list[int]]) -> dict:
        accuracy = {n: float(np.mean([p == y for p, y in zip(v, [0, 1, 1, 0])])) for n, v in predictions.items()}
        return {
            "config": {},
            "metrics": {n: {"accuracy": a} for n, a in accuracy.items()},
            "predictions": {"document_index": [0, 1, 2, 3], "labels": [0, 1, 1, 0], **predictions},
        }

    recorded = result({"16": [0, 1, 1, 0], "64": [0, 1, 0, 0]})
    assert reproduction(recorded, result({"16": [0, 1, 1, 0], "64": [0, 1, 0, 0]})) == {
        "16": {"recorded": 1.0, "retrained": 1.0, "same_predictions": 1.0},
        "64": {"recorded": 0.75, "retrained": 0.75, "same_predictions": 1.0},
    }
    assert "exactly at 16, 64 tokens" in describe_reproduction(reproduction(recorded, recorded))
    # Other labels at 64: the share of equal labels says how many documents changed, not only the accuracy.
    changed = reproduction(recorded, result({"16": [0, 1, 1, 0], "64": [1, 1, 1, 1]}))
    assert changed["64"] == {"recorded": 0.75, "retrained": 0.5, "same_predictions": 0.25}
    assert describe_reproduction(changed).startswith("other predictions than the recorded run at 64: 0.5")
    assert "16:" not in describe_reproduction(changed)
    unknown = reproduction(recorded, {"metrics": {"16": {"accuracy": 1.0}}})  # retrained without predictions
    assert unknown == {"16": {"recorded": 1.0, "retrained": 1.0, "same_predictions": None}}
    assert describe_reproduction(unknown) == "no predictions to compare at 16 tokens (accuracies: 1.0 vs recorded 1.0)"


def test_real_runs_predictions_give_every_cell_an_interval(assets, tmp_path):
    values = sweep_dict(assets, tmp_path / "sweep", seeds=(0,), long_documents=0)
    values["base"].update(max_steps=2, batch_size=8, pooling="mean")
    values["variants"] = [
        {"label": "single", "encoding": "alibi"},
        {"label": "chunked", "encoding": "alibi", "eval_mode": "chunked", "chunk_window": 16},
    ]
    values["baseline_variant"] = "single"
    summary = run_sweep(SweepConfig.from_dict(values))  # the real classification recipe, two steps each
    intervals = summary["analysis"]["all"]["intervals"]["accuracy"]
    for row in ("single", "chunked"):
        for length in ("16", "64"):
            found = intervals[row][length]
            assert found["estimate"] == pytest.approx(summary["summary"][row][length]["accuracy"][0], abs=1e-4)
            assert found["low"] <= found["estimate"] <= found["high"] and found["n_docs"] == 20
    # At 16 tokens one chunk of 16 is the whole truncated document: both rows read the same tokens.
    same = summary["analysis"]["all"]["differences"]["accuracy"]["chunked"]["16"]
    assert same["estimate"] == pytest.approx(0.0, abs=1e-6)


def test_driver_commits_only_the_finished_run_folder(tmp_path, monkeypatch):
    import subprocess

    spec = importlib.util.spec_from_file_location("run_study_tool", ROOT / "tools" / "run_study.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.org")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.org")
    (repo / "other.txt").write_text("work in progress")
    subprocess.run([*git, "add", "other.txt"], cwd=repo, check=True)  # staged, must stay out of the run's commit
    run = repo / "study" / "runs" / "alibi_seed0"
    run.mkdir(parents=True)
    (run / "results.json").write_text("{}")
    monkeypatch.setattr(driver, "ROOT", repo)
    driver.commit([run], "study: run runs/alibi_seed0 finished")
    driver.commit([run], "nothing new")  # nothing to commit: no second commit, no error
    log = subprocess.run(["git", "log", "--format=%s", "--name-only"], cwd=repo, capture_output=True, text=True)
    assert log.stdout.split() == [
        "study:",
        "run",
        "runs/alibi_seed0",
        "finished",
        "study/runs/alibi_seed0/results.json",
    ]
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True)
    assert staged.stdout.split() == ["other.txt"]


def test_driver_survives_a_held_index_lock_and_commits_once_it_is_free(tmp_path, monkeypatch, capsys):
    import subprocess

    spec = importlib.util.spec_from_file_location("run_study_tool", ROOT / "tools" / "run_study.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "t")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "t@example.org")
    run = repo / "study" / "runs" / "t5_seed0"
    run.mkdir(parents=True)
    (run / "results.json").write_text("{}")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")  # a commit made by hand at the same moment
    sleeps = []

    def release_after_first_wait(seconds):
        sleeps.append(seconds)
        lock.unlink(missing_ok=True)

    monkeypatch.setattr(driver, "ROOT", repo)
    monkeypatch.setattr(driver.time, "sleep", release_after_first_wait)
    driver.commit([run], "study: run runs/t5_seed0 finished")
    assert len(sleeps) == 1 and "attempt 1 of 5" in capsys.readouterr().out
    log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True)
    assert log.stdout.strip() == "study: run runs/t5_seed0 finished"
    lock.write_text("")  # held for good: warn and go on, never raise
    (run / "results.json").write_text('{"metrics": {}}')
    monkeypatch.setattr(driver.time, "sleep", lambda seconds: None)
    driver.commit([run], "second")
    assert "not done (do it by hand): commit: second" in capsys.readouterr().out


def test_interim_tables_of_a_stopped_sweep_hold_its_finished_runs_and_train_nothing(assets, tmp_path, capsys):
    from hf_posenc.recipes.sweep import finished_sweep, render_finished

    values = sweep_dict(assets, tmp_path / "sweep", variants=("perfect", "wrong", "half"), seeds=(0, 1))
    sweep = SweepConfig.from_dict(values)
    with pytest.raises(ValueError, match="baseline row 'perfect'.*has not finished seed 0"):
        finished_sweep(sweep)
    runner = FakeRunner()
    stopped = SweepConfig.from_dict({**values, "variants": values["variants"][:2], "seeds": [0]})
    run_sweep(stopped, runner=runner)  # a study stopped after two rows of seed 0
    runner(dataclasses.replace(sweep, variants=[values["variants"][0]], seeds=[1]).runs()[0])  # and seed 1's first
    interim = finished_sweep(sweep)
    assert [v["label"] for v in interim.variants] == ["perfect", "wrong"] and interim.seeds == [0]
    assert interim.description.startswith("Interim tables: 2 of 3 rows, seeds [0] of [0, 1]; not finished yet: half.")
    calls = len(runner.calls)
    summary = render_finished(sweep)
    assert len(runner.calls) == calls  # nothing trained
    runner(dataclasses.replace(sweep, variants=[values["variants"][1]], seeds=[1]).runs()[0])
    assert finished_sweep(sweep).seeds == [0, 1] and len(finished_sweep(sweep).variants) == 2  # every kept row: seed 1
    for seed in (0, 1):  # the last row finishes both seeds: the tables are the final ones, with no interim note
        runner(dataclasses.replace(sweep, variants=[values["variants"][2]], seeds=[seed]).runs()[0])
    assert finished_sweep(sweep) == dataclasses.replace(sweep, resume=True)
    for seed in (0, 1):
        shutil.rmtree(dataclasses.replace(sweep, variants=[values["variants"][2]], seeds=[seed]).runs()[0].output_dir)
    calls = len(runner.calls)
    assert set(summary["summary"]) >= {"perfect", "wrong"} and "half" not in summary["summary"]
    text = (tmp_path / "sweep" / "results.md").read_text()
    assert "Interim tables: 2 of 3 rows" in text and "| wrong" in text
    printed = capsys.readouterr().out
    assert "perfect seed 0: reused" in printed and "wrong seed 0: reused" in printed
    # The study entry point: a dataset whose baseline has not finished is skipped with a note, not an error.
    study = load_study()
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(values))
    [again] = study.main(["--config", str(config), "--output_dir", str(tmp_path / "sweep"), "--finished_only"])
    assert again["summary"].keys() == summary["summary"].keys() and len(runner.calls) == calls
    assert study.main(["--config", str(config), "--output_dir", str(tmp_path / "empty"), "--finished_only"]) == []
    assert "no interim table yet" in capsys.readouterr().out
    # Only "not started" is skipped: a finished run recorded with other settings is still refused.
    first = Path(dataclasses.replace(sweep, variants=[values["variants"][0]], seeds=[0]).runs()[0].output_dir)
    recorded = json.loads((first / "results.json").read_text())
    recorded["config"]["learning_rate"] = 0.5
    (first / "results.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match="learning_rate"):
        study.main(["--config", str(config), "--output_dir", str(tmp_path / "sweep"), "--finished_only"])


def test_driver_never_commits_tables_over_fewer_seeds_than_the_committed_ones(tmp_path, monkeypatch, capsys):
    import subprocess

    spec = importlib.util.spec_from_file_location("run_study_tool", ROOT / "tools" / "run_study.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    repo = tmp_path / "repo"
    sweep = repo / "study" / "pang_lee"
    sweep.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "t")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "t@example.org")
    monkeypatch.setattr(driver, "ROOT", repo)
    results, table = sweep / "results.json", sweep / "results.md"
    files = [results, table, sweep / "results.png"]  # the plot was never made: not tracked, not restored
    assert driver.keeps_committed_tables(results, files) is False  # nothing committed yet
    results.write_text(json.dumps({"runs": [{"seed": 0}, {"seed": 1}]}))
    table.write_text("two seeds")
    driver.commit(files, "tables over two seeds")
    results.write_text(json.dumps({"runs": [{"seed": 0}]}))  # a restarted driver renders seed 0 alone first
    table.write_text("one seed")
    assert driver.keeps_committed_tables(results, files) is True
    assert json.loads(results.read_text())["runs"] == [{"seed": 0}, {"seed": 1}] and table.read_text() == "two seeds"
    assert "kept the committed tables of pang_lee (seeds [0, 1]; this render had [0])" in capsys.readouterr().out
    results.write_text(json.dumps({"runs": [{"seed": 0}, {"seed": 1}, {"seed": 2}]}))
    assert driver.keeps_committed_tables(results, files) is False  # more seeds: committed as usual
    assert len(json.loads(results.read_text())["runs"]) == 3
    # A sweep that dropped a row renders fewer runs over the same seeds (seeds recorded in each run's config):
    # those tables are new, not behind.
    results.write_text(json.dumps({"runs": [{"config": {"seed": s}} for s in (0, 1, 2, 0, 1, 2)]}))
    driver.commit(files, "tables over three seeds, two rows")
    results.write_text(json.dumps({"runs": [{"config": {"seed": s}} for s in (0, 1, 2)]}))
    assert driver.keeps_committed_tables(results, files) is False
    # The index lock held while restoring: retried, then a warning; the driver goes on.
    results.write_text(json.dumps({"runs": [{"config": {"seed": 0}}]}))
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    monkeypatch.setattr(driver.time, "sleep", lambda seconds: None)
    assert driver.keeps_committed_tables(results, files) is True
    printed = capsys.readouterr().out
    assert "attempt 5 of 5" in printed
    assert "not done (do it by hand): restore the committed tables of pang_lee" in printed
    # Tables outside the repository are never compared (nothing committed to compare with).
    outside = tmp_path / "elsewhere" / "results.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"runs": [{"seed": 0}]}))
    assert driver.keeps_committed_tables(outside, [outside]) is False


def test_head_to_head_comparisons_have_their_known_values_and_names_are_checked_first(assets, tmp_path):
    comparisons = [
        {"row": "wrong", "reference": "copy"},
        {"row": "TF-IDF+LR (train full)", "reference": "wrong"},
    ]
    values = sweep_dict(assets, tmp_path / "sweep", comparisons=comparisons)
    summary = run_sweep(SweepConfig.from_dict(values), runner=FakeRunner())
    found = summary["analysis"]["all"]["comparisons"]["accuracy"]
    assert list(found) == ["wrong minus copy", "TF-IDF+LR (train full) minus wrong"]
    wrong = found["wrong minus copy"]["64"]
    assert wrong["estimate"] == wrong["low"] == wrong["high"] == -1.0 and wrong["paired_seeds"]
    # "wrong" is never right: the TF-IDF row minus it is the TF-IDF row's own accuracy.
    tfidf = summary["baseline"]["TF-IDF+LR (train full)"]["16"]["accuracy"]
    assert found["TF-IDF+LR (train full) minus wrong"]["16"]["estimate"] == pytest.approx(tfidf, abs=1e-4)
    assert set(summary["analysis"]["over 80 tokens"]["comparisons"]["accuracy"]) == set(found)
    table = (tmp_path / "sweep" / "results.md").read_text()
    head = table.index("## Head to head (20 test documents)")
    assert table.index("## At a glance") < head < table.index("| accuracy | 16 |")
    assert "| accuracy - reference | 16 | 64 |" in table[head:]
    assert "| wrong minus copy | -1.000 [-1.00, -1.00] * | -1.000 [-1.00, -1.00] * |" in table[head:]
    for name in ("results_head_to_head.png", "results_long_head_to_head.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:4] == b"\x89PNG"
    # Names are checked against the sweep's rows before anything runs; the message lists the rows.
    runner = FakeRunner()
    unknown = SweepConfig.from_dict(
        {**values, "output_dir": str(tmp_path / "other"), "comparisons": [{"row": "wrong", "reference": "chunked"}]}
    )
    with pytest.raises(ValueError, match=r"lacks: \['chunked'\]. Rows: \['TF-IDF\+LR \(train @32\)'"):
        run_sweep(unknown, runner=runner)
    assert runner.calls == []
    for bad, error in (
        ({"row": "wrong"}, ValueError),
        ({"row": "wrong", "reference": "copy", "metric": "macro_f1"}, ValueError),
        ({"row": "wrong", "reference": "wrong"}, ValueError),
        ({"row": "wrong", "reference": 3}, TypeError),
        ("wrong minus copy", ValueError),
    ):
        with pytest.raises(error, match="comparison"):
            SweepConfig.from_dict({**values, "comparisons": [bad]})


def test_interim_tables_keep_only_the_comparisons_of_finished_rows(assets, tmp_path):
    from hf_posenc.recipes.sweep import finished_sweep

    comparisons = [{"row": "wrong", "reference": "perfect"}, {"row": "half", "reference": "wrong"}]
    values = sweep_dict(assets, tmp_path / "sweep", variants=("perfect", "wrong", "half"), comparisons=comparisons)
    stopped = SweepConfig.from_dict({**values, "variants": values["variants"][:2], "comparisons": comparisons[:1]})
    run_sweep(stopped, runner=FakeRunner())  # "half" has not run
    interim = finished_sweep(SweepConfig.from_dict(values))
    assert interim.comparisons == comparisons[:1]


def test_tfidf_on_random_windows_reads_the_windows_the_fine_tune_reads(assets):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    from hf_posenc.recipes.methods import RandomWindows
    from hf_posenc.recipes.sweep import tfidf_baseline, tfidf_rows

    run = RunConfig.from_dict(
        {"model": str(assets["bert"]), "dataset": str(assets["reviews"]), "train_length": 32, "eval_lengths": [16, 64]}
    )
    tokenizer = AutoTokenizer.from_pretrained(str(assets["bert"]))
    rows = tfidf_baseline(run, tokenizer, windows=[2, 1])
    name = "TF-IDF+LR (train 2 random 32-token windows)"
    assert list(rows) == list(tfidf_rows(32, [2, 1])) and list(rows)[2] == name and tfidf_rows(32) == tuple(rows)[:2]
    # By hand: the windows RandomWindows draws for the run's seed in epoch 0 (30 tokens: [CLS] and [SEP] apart).
    train, test = classification_splits(run)
    ids = tokenizer(list(train["text"]), add_special_tokens=False)["input_ids"]
    drawn = RandomWindows([{"ids": i, "label": y} for i, y in zip(ids, train["label"])], 30, 2, run.seed)
    texts = [tokenizer.decode(drawn[i]["ids"]) for i in range(len(drawn))]
    assert sum(len(i) > 30 for i in ids) > 10  # most fixture reviews are longer than a window
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(
        vectorizer.fit_transform(texts), [drawn[i]["label"] for i in range(len(drawn))]
    )
    expected = classifier.predict(vectorizer.transform(list(test["text"])))
    assert rows[name]["full"]["predictions"] == [[int(x) for x in expected]]  # one seed: the run's
    assert rows[name]["full"]["seeds"] == [run.seed] and "seeds" not in rows["TF-IDF+LR (train full)"]["full"]
    # Windows as long as every review are the whole reviews: one window per review is the @L row's training text.
    whole = RunConfig.from_dict({**run.to_dict(), "train_length": 512, "eval_lengths": [512]})
    rows = tfidf_baseline(whole, tokenizer, windows=[1])
    for length, cell in rows["TF-IDF+LR (train @512)"].items():
        window = rows["TF-IDF+LR (train 1 random 512-token window)"][length]
        assert window["predictions"] == [cell["predictions"]] and window["accuracy"] == cell["accuracy"]
    for bad in ([0], [2, -1], ["2"], [True]):
        with pytest.raises(ValueError, match="tfidf_windows holds window counts >= 1"):
            SweepConfig.from_dict({"variants": [{"encoding": "alibi"}], "tfidf_windows": bad})


def test_tfidf_on_random_windows_is_drawn_per_seed_and_pairs_with_the_fine_tunes_seed_by_seed(assets, tmp_path):
    from transformers import AutoTokenizer

    from hf_posenc.recipes.results import markdown_table
    from hf_posenc.recipes.sweep import document_table, tfidf_baseline

    window = "TF-IDF+LR (train 2 random 32-token windows)"
    comparisons = [{"row": "perfect", "reference": window}, {"row": "perfect", "reference": "TF-IDF+LR (train full)"}]
    values = sweep_dict(assets, tmp_path / "sweep", seeds=(0, 1), tfidf_windows=[2], comparisons=comparisons)
    summary = run_sweep(SweepConfig.from_dict(values), runner=FakeRunner())
    tokenizer = AutoTokenizer.from_pretrained(str(assets["bert"]))
    runs = {run.seed: run for run in SweepConfig.from_dict(values).runs() if run.variant == "perfect"}
    alone = [tfidf_baseline(runs[seed], tokenizer, [2])[window] for seed in (0, 1)]
    for length, cell in summary["baseline"][window].items():
        # Each seed's row is what a one-seed call with that seed gives: the windows that seed's fine-tune reads.
        assert cell["seeds"] == [0, 1]
        assert cell["predictions"] == [one[length]["predictions"][0] for one in alone]
        assert cell["by_seed"]["accuracy"] == [one[length]["accuracy"] for one in alone]
        assert cell["accuracy"] == pytest.approx(np.mean(cell["by_seed"]["accuracy"]), abs=1e-5)
    table, seeds = document_table(summary)
    assert seeds[window] == [0, 1] and table[window][16][0].shape == (2, len(summary["documents"]["labels"]))
    assert "TF-IDF+LR (train full)" not in seeds  # deterministic: one seed, no seed values
    found = summary["analysis"]["all"]["comparisons"]["accuracy"]
    assert found[f"perfect minus {window}"]["16"]["paired_seeds"] is True
    assert found["perfect minus TF-IDF+LR (train full)"]["16"]["paired_seeds"] is False
    # A perfect row minus TF-IDF: one minus TF-IDF's mean accuracy over the seeds.
    expected = 1 - np.mean(summary["baseline"][window]["16"]["by_seed"]["accuracy"])
    assert found[f"perfect minus {window}"]["16"]["estimate"] == pytest.approx(expected, abs=1e-4)
    line = next(x for x in markdown_table({}, [16], "accuracy", summary["baseline"]).splitlines() if window in x)
    spread = np.std(summary["baseline"][window]["16"]["by_seed"]["accuracy"], ddof=1)
    assert f"± {spread:.3f}" in line


def test_a_dataset_of_a_study_may_skip_shared_variants_and_their_comparisons(assets, tmp_path):
    comparisons = [{"row": "half", "reference": "perfect"}, {"row": "wrong", "reference": "perfect"}]
    values = sweep_dict(assets, tmp_path, variants=("perfect", "wrong", "half"), seeds=(0,), comparisons=comparisons)
    values.pop("output_dir")
    datasets = {"a": {"dataset": str(assets["reviews"])}, "b": {"dataset": str(assets["other"])}}
    study = {"name": "tiny", "output_dir": str(tmp_path / "study"), "sweep": values, "datasets": datasets}
    datasets["b"]["skip_variants"] = ["half"]
    first, second = study_sweeps(study)
    assert [v["label"] for v in first.variants] == ["perfect", "wrong", "half"] and first.comparisons == comparisons
    assert [v["label"] for v in second.variants] == ["perfect", "wrong"] and second.comparisons == comparisons[1:]
    runner = FakeRunner()
    run_study([first, second], runner=runner)
    assert sorted(runner.calls) == [("half", 0), ("perfect", 0), ("perfect", 0), ("wrong", 0), ("wrong", 0)]
    datasets["b"]["skip_variants"] = ["halve"]
    with pytest.raises(ValueError, match=r"skip_variants of 'b' names no variant of the study: \['halve'\]"):
        study_sweeps(study)
    datasets["b"]["skip_variants"] = "half"
    with pytest.raises(TypeError, match="is a list of variant labels"):
        study_sweeps(study)
    # An unlabelled variant is named as the dataset's own runs name it (its run fields, e.g. max_length).
    values["variants"].append({"encoding": "learned"})
    datasets["b"] |= {"max_length": 128, "skip_variants": ["learned@128"]}
    first, second = study_sweeps(study)
    assert [run.variant for run in first.runs()][-1] == "learned"
    assert [run.variant for run in second.runs()] == ["perfect", "wrong", "half"]
