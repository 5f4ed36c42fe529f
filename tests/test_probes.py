"""Long-context retrieval probes on tiny models and tiny generated sets (no download, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import string

import pytest
import torch
from tiny_models import BERT_LIKE

import hf_posenc
from hf_posenc.recipes.probes import (
    ModelEmbedder,
    ProbeConfig,
    ProbeMethod,
    ProbeSettings,
    build_model,
    chunk_document,
    evaluate,
    generate_probe_set,
    load_probe_set,
    main,
    preset_methods,
    retrieval_hits,
    run_probes,
)
from hf_posenc.recipes.probes.data import CITIES, NAMES

_WORDS = (
    "the grass is green sky blue sun yellow here we go there and back again pass key remember it what special "
    "magic number of a in was city river old new"
)
WORDS = _WORDS.split()
TRAINED = 64


def tiny_vocab() -> list[str]:
    """Specials, whole words of the templates, and single characters (any name or number tokenizes)."""
    chars = list(string.ascii_lowercase + string.digits)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "'", "?", ","] + WORDS
    return list(dict.fromkeys(tokens + chars + [f"##{c}" for c in chars]))  # "a" is a word and a character


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_POSENC_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_probe_bert")
    vocab = {token: index for index, token in enumerate(tiny_vocab())}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(**{**BERT_LIKE, "vocab_size": len(vocab), "max_position_embeddings": TRAINED})
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture
def haystack(tmp_path):
    path = tmp_path / "haystack.txt"
    lines = ["the old city was in a river valley. the new river is blue, and the sky is green."] * 3
    lines += ["we go back there. it was a magic city of old. here the sun is yellow and the grass is blue."] * 3
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def settings(haystack: str, **changes) -> ProbeSettings:
    values = dict(lengths=[48, 64, 128], depths=[0.0, 0.5, 1.0], per_depth=2, seed=3, haystack=haystack)
    return ProbeSettings(**{**values, **changes})


def occurrences(sequence: list[int], part: list[int]) -> list[int]:
    return [i for i in range(len(sequence) - len(part) + 1) if sequence[i : i + len(part)] == part]


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


def test_generation_is_deterministic_given_the_seed(tokenizer, haystack):
    first = generate_probe_set(tokenizer, settings(haystack))
    again = generate_probe_set(tokenizer, settings(haystack))
    other = generate_probe_set(tokenizer, settings(haystack, seed=4))
    assert first == again
    assert first.fingerprint != other.fingerprint
    assert [d.input_ids for g in first.groups for d in g.documents] != [
        d.input_ids for g in other.groups for d in g.documents
    ]


def test_every_document_has_one_key_at_its_depth_and_the_exact_length(tokenizer, haystack):
    probe_set = generate_probe_set(tokenizer, settings(haystack))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert [(g.task, g.length) for g in probe_set.groups] == [
        (task, n) for task in ("passkey", "needle") for n in (48, 64, 128)
    ]
    for group in probe_set.groups:
        assert len(group.documents) == 6  # 3 depths x 2: the candidate pool
        owners = [d.query for d in group.documents]
        assert len(set(owners)) == len(owners)  # every query names its own key
        for document in group.documents:
            ids = document.input_ids
            assert len(ids) == group.length  # special tokens included
            assert ids[0] == cls and ids[-1] == sep and ids.count(cls) == 1 and ids.count(sep) == 1
            key = tokenizer(document.key, add_special_tokens=False)["input_ids"]
            assert occurrences(ids, key) == [document.key_start]  # exactly one key, where recorded
            assert document.key_length == len(key)
            room = group.length - 2 - len(key)
            assert document.realized_depth == pytest.approx((document.key_start - 1) / room)
            # the key sits at the sentence boundary nearest the requested depth: within one sentence of it
            assert abs(document.realized_depth - document.depth) * room <= 20
            if document.depth in (0.0, 1.0):
                assert document.realized_depth == document.depth
            # no other document's key text leaks into this one
            others = [tokenizer(o.key, add_special_tokens=False)["input_ids"] for o in group.documents]
            assert sum(bool(occurrences(ids, k)) for k in others) == 1
            assert document.query_ids == tokenizer(document.query)["input_ids"]
    passkey = probe_set.groups[0].documents
    assert all(d.key.split("'")[0] in NAMES for d in passkey)
    needle = probe_set.groups[3].documents
    assert all(d.key.split()[3] in CITIES for d in needle)


def without_key(document) -> list[int]:
    return [*document.input_ids[: document.key_start], *document.input_ids[document.key_start + document.key_length :]]


@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_documents_of_a_length_differ_only_in_the_key(tokenizer, haystack, task):
    for group in generate_probe_set(tokenizer, settings(haystack, tasks=[task])).groups:
        by_key_length = {}
        for document in group.documents:  # keys of equal token length leave haystacks of equal length
            by_key_length.setdefault(document.key_length, []).append(without_key(document))
        assert all(len({tuple(h) for h in same}) == 1 for same in by_key_length.values())
    varied = generate_probe_set(tokenizer, settings(haystack, tasks=["needle"], varied_haystack=True)).groups[-1]
    assert len({tuple(without_key(d)[:20]) for d in varied.documents}) > 1


def test_probe_set_is_cached_under_its_settings_hash(tokenizer, haystack, tmp_path):
    first = load_probe_set(tokenizer, settings(haystack))
    cached = tmp_path / "cache" / "probes" / f"{first.fingerprint}.json"
    assert cached.is_file()
    assert load_probe_set(tokenizer, settings(haystack)) == first
    assert load_probe_set(tokenizer, settings(haystack, per_depth=1)).fingerprint != first.fingerprint
    summary = first.summary()
    assert summary["hash"] == first.fingerprint and summary["settings"]["seed"] == 3
    assert summary["chance"]["passkey/48"] == pytest.approx(1 / 6)


def test_bad_settings_and_empty_haystack_name_the_fix(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.*--haystack"):
        generate_probe_set(tokenizer, settings(str(empty)))
    with pytest.raises(ValueError, match="empty.*--haystack"):
        generate_probe_set(tokenizer, settings(str(empty)), haystack=[])
    with pytest.raises(ValueError, match="Unknown probe task"):
        ProbeSettings(tasks=["passkeys"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        ProbeSettings(depths=[1.5])
    with pytest.raises(ValueError, match="lower per_depth"):
        ProbeSettings(per_depth=20)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------------


def key_embedder(tokenizer, names: list[str]):
    """Embeds the key perfectly: a one-hot of the key owner's name, found in the ids (document or query)."""
    patterns = [tokenizer(name, add_special_tokens=False)["input_ids"] for name in names]

    def embed(sequences: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(sequences), len(names))
        for row, ids in enumerate(sequences):
            for column, pattern in enumerate(patterns):
                if occurrences(ids, pattern):
                    out[row, column] = 1.0
        return out

    return embed


def test_perfect_key_embedding_scores_one_and_constant_scores_chance(tokenizer, haystack):
    probe_set = generate_probe_set(tokenizer, settings(haystack))
    names = [n.lower() for n in NAMES + CITIES]
    perfect = evaluate(probe_set, key_embedder(tokenizer, names), progress=False)
    assert all(v == 1.0 for per_task in perfect["acc_at_1"].values() for v in per_task.values())
    assert all(v == 1.0 for t in perfect["by_depth"].values() for d in t.values() for v in d.values())
    assert all(n == 0 for per_task in perfect["tied_queries"].values() for n in per_task.values())
    # a constant embedding ties every document: each query gets 1 / candidates, exactly chance
    constant = evaluate(probe_set, lambda seqs: torch.ones(len(seqs), 4), progress=False)
    for task, per_length in constant["acc_at_1"].items():
        for length, value in per_length.items():
            candidates = constant["candidates"][task][length]
            assert value == pytest.approx(1 / candidates, abs=1e-12)
            assert constant["tied_queries"][task][length] == candidates
    assert constant["candidates"]["needle"]["64"] == 6


def test_retrieval_hits_share_ties_and_miss_when_another_document_is_nearer():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    documents = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    # query 0 ties with document 1 (half a hit); query 1 is nearer document 2 (a miss); query 2 is a clean hit
    assert retrieval_hits(queries, documents).tolist() == [0.5, 0.0, 1.0]
    three_way = retrieval_hits(torch.ones(3, 2), torch.ones(3, 2))
    torch.testing.assert_close(three_way, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Methods and embeddings on a tiny model
# ---------------------------------------------------------------------------------------------------------------------


def test_chunked_encoding_equals_a_hand_computation(checkpoint, tokenizer):
    model, tokenizer, trained = build_model(str(checkpoint), ProbeMethod("chunked", chunked=True))
    assert trained == TRAINED
    generator = torch.Generator().manual_seed(0)
    body = torch.randint(9, len(tiny_vocab()), (150,), generator=generator).tolist()
    document = [tokenizer.cls_token_id, *body, tokenizer.sep_token_id]  # 152 tokens: chunks of 62 + 62 + 26 body
    embedder = ModelEmbedder(model, tokenizer, chunk_length=TRAINED)
    chunks = chunk_document(document, TRAINED, tokenizer)
    assert [len(c) for c in chunks] == [64, 64, 28]
    expected, total = torch.zeros(32), 0
    with torch.no_grad():
        for piece in (body[:62], body[62:124], body[124:]):
            ids = torch.tensor([[tokenizer.cls_token_id, *piece, tokenizer.sep_token_id]])
            hidden = model(input_ids=ids).last_hidden_state[0]
            expected += hidden.mean(0) * ids.shape[1]
            total += ids.shape[1]
    torch.testing.assert_close(embedder([document])[0], expected / total, rtol=1e-5, atol=1e-6)
    short = document[:40]  # fits in one window: the plain embedding
    torch.testing.assert_close(embedder([short]), ModelEmbedder(model, tokenizer)([short]))
    # CLS pooling weights each chunk's first vector the same way
    cls = ModelEmbedder(model, tokenizer, chunk_length=TRAINED, pooling="cls")([document])[0]
    firsts = ModelEmbedder(model, tokenizer, pooling="cls")(chunks)
    torch.testing.assert_close(cls, (firsts * torch.tensor([[64.0], [64.0], [28.0]])).sum(0) / 156)


def test_mean_pooling_ignores_padding(checkpoint):
    model, tokenizer, _ = build_model(str(checkpoint), ProbeMethod())
    sequences = [[2, 10, 11, 12, 3], [2, 13, 3]]
    together = ModelEmbedder(model, tokenizer, batch_size=2)(sequences)
    alone = torch.cat([ModelEmbedder(model, tokenizer)([s]) for s in sequences])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(preset_methods(max_length=128)))
def test_every_preset_method_builds_and_runs_past_the_trained_length(checkpoint, name):
    method = preset_methods(max_length=128)[name]
    if method.attention_scale is not None:
        pytest.skip("attention_scale is forwarded to patch_model (see test_attention_scale_is_forwarded)")
    model, tokenizer, trained = build_model(str(checkpoint), method)
    length = TRAINED if name == "stock" else 128
    ids = [[tokenizer.cls_token_id, *[20] * (length - 2), tokenizer.sep_token_id]]
    chunk = trained if method.chunked else None
    embedding = ModelEmbedder(model, tokenizer, chunk_length=chunk)(ids)
    assert embedding.shape == (1, 32) and torch.isfinite(embedding).all()


def test_dynamic_scaling_runs_short_inputs_on_the_stock_model(checkpoint):
    from hf_posenc.recipes.probes import DynamicEmbedder

    stock, tokenizer, _ = build_model(str(checkpoint), ProbeMethod())
    for method in (
        ProbeMethod("gd", encoding="learned", position_ids="grouped", max_length=256, dynamic=True),
        ProbeMethod("pd", init="interpolate", max_length=256, dynamic=True),
    ):
        embedder = DynamicEmbedder(str(checkpoint), method)
        short, long = [2, *range(10, 48), 3], [2, *([20, 21, 22] * 42), 3]  # 40 and 128 tokens: scales 1 and 2
        together = embedder([long, short])
        torch.testing.assert_close(together[1], ModelEmbedder(stock, tokenizer)([short])[0])
        fixed = dataclasses.replace(method, max_length=128, dynamic=False)  # scale 2: group size / stretch 2
        model, _, _ = build_model(str(checkpoint), fixed)
        torch.testing.assert_close(together[0], ModelEmbedder(model, tokenizer)([long])[0])
        assert sorted(embedder.embedders) == [1, 2]
    with pytest.raises(ValueError, match="dynamic scales a learned-table extension"):
        ProbeMethod("x", encoding="alibi", max_length=128, dynamic=True)


def test_rope_scaling_options_reach_patch_model(checkpoint):
    method = ProbeMethod("rope-ntk", encoding="rope", options={"scaling": "ntk", "factor": 4}, max_length=256)
    model, _, _ = build_model(str(checkpoint), method)
    stack = hf_posenc.patch_spec(model)["stacks"]["encoder"]
    assert stack["encoding"] == "rope" and stack["options"]["scaling"] == "ntk" and stack["max_length"] == 256


@pytest.mark.slow
def test_real_tokenizer_documents_have_the_exact_length(haystack):
    from transformers import AutoTokenizer

    from hf_posenc.recipes.data import minilm_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(minilm_checkpoint())
    probe_set = generate_probe_set(tokenizer, settings(haystack, lengths=[128, 1024], per_depth=1))
    for group in probe_set.groups:
        for document in group.documents:
            key = tokenizer(document.key, add_special_tokens=False)["input_ids"]
            assert len(document.input_ids) == group.length
            assert occurrences(document.input_ids, key) == [document.key_start]


def test_attention_scale_is_forwarded(checkpoint, monkeypatch):
    calls = []
    real = hf_posenc.patch_model

    def recording(model, encoding=None, **kwargs):
        calls.append((encoding, kwargs.get("attention_scale")))
        kwargs.pop("attention_scale", None)
        return real(model, encoding, **kwargs)

    monkeypatch.setattr(hf_posenc, "patch_model", recording)
    for method in (
        ProbeMethod("a", encoding="alibi", max_length=128, attention_scale="log"),
        ProbeMethod("b", init="interpolate", max_length=128, attention_scale="log"),
        ProbeMethod("c", encoding="learned", position_ids="grouped", max_length=128, attention_scale="log"),
        ProbeMethod("d", attention_scale="log"),
    ):
        build_model(str(checkpoint), method)
    assert calls == [("alibi", "log"), ("learned", "log"), ("learned", "log"), ("learned", "log")]


def test_bad_methods_name_the_fix(checkpoint, tokenizer, haystack, tmp_path):
    config = ProbeConfig(
        checkpoint=str(checkpoint),
        settings=settings(haystack, lengths=[64, 128]),
        methods=[ProbeMethod("stock")],
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(ValueError, match=r"exceed the 64 positions.*--max_length 128.*--init"):
        run_probes(config, progress=False)
    config.methods = [ProbeMethod("alibi without max_length", encoding="alibi")]
    with pytest.raises(ValueError, match="--max_length 128"):
        run_probes(config, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="Unknown probe method 'extend-cpy'"):
        ProbeConfig(methods=["extend-cpy"])
    with pytest.raises(ValueError, match="need the new limit.*--max_length"):
        ProbeMethod("x", init="copy")
    with pytest.raises(ValueError, match="Unknown init"):
        ProbeMethod("x", init="tile", max_length=128)
    with pytest.raises(ValueError, match="either init"):
        ProbeMethod("x", init="copy", position_ids="grouped", max_length=128)
    with pytest.raises(ValueError, match="needs a way to reach it"):
        build_model(str(checkpoint), ProbeMethod("x", max_length=128))
    with pytest.raises(ValueError, match="Unknown pooling"):
        ProbeConfig(pooling="max")
    with pytest.raises(ValueError):  # patch_model's own check of the encoding name
        build_model(str(checkpoint), ProbeMethod("x", encoding="alibi2", max_length=128))


@pytest.mark.parametrize(
    ("cls", "kind", "valid"),
    [
        (ProbeSettings, "probe setting", "lengths"),
        (ProbeMethod, "probe method", "init"),
        (ProbeConfig, "probe config", "methods"),
    ],
)
def test_probe_dicts_refuse_unknown_keys_naming_the_valid_ones(tmp_path, cls, kind, valid):
    with pytest.raises(ValueError, match=rf"Unknown {kind} key\(s\) \['lenghts'\]\. Valid keys: .*'{valid}'"):
        cls.from_dict({"lenghts": [128]})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        cls.from_file(path)
    path.write_text(json.dumps(cls().to_dict()))
    assert cls.from_file(path) == cls()


# ---------------------------------------------------------------------------------------------------------------------
# Runs: results files, resume, command line
# ---------------------------------------------------------------------------------------------------------------------


def test_run_writes_results_per_method_and_resumes(checkpoint, haystack, tmp_path, monkeypatch):
    out = tmp_path / "probe"
    config = ProbeConfig(
        checkpoint=str(checkpoint),
        settings=settings(haystack, lengths=[48, 64, 96], depths=[0.0, 1.0], per_depth=1),
        methods=[
            {"name": "stock", "lengths": [48, 64]},
            ProbeMethod("extend-copy", init="copy", max_length=128),
            ProbeMethod("chunked", chunked=True),
            ProbeMethod("swap-alibi", encoding="alibi", max_length=128),
            ProbeMethod("needs-scale", encoding="rope", max_length=128, attention_scale="log"),
        ],
        output_dir=str(out),
    )
    results = run_probes(config, progress=False)
    for name in ("results.json", "results.md", "results.png", "heatmaps.png", "config.json"):
        assert (out / name).is_file()
    assert sorted(p.stem for p in (out / "methods").glob("*.json")) == sorted(
        ["stock", "extend-copy", "chunked", "swap-alibi", "needs-scale"]
    )
    stock = results["methods"]["stock"]
    assert stock["lengths"] == [48, 64] and set(stock["acc_at_1"]["passkey"]) == {"48", "64"}
    assert results["methods"]["extend-copy"]["patch_spec"] is not None
    assert set(results["methods"]["chunked"]["acc_at_1"]["needle"]) == {"48", "64", "96"}
    if "attention_scale" not in str(hf_posenc.patch_model.__code__.co_varnames):
        assert results["methods"]["needs-scale"]["status"] == "unavailable"
    stored = json.loads((out / "results.json").read_text())
    assert stored["probe_set"]["hash"] == results["probe_set"]["hash"]
    assert stored["environment"]["git_revision"] is not None or stored["environment"]["torch"]
    text = (out / "results.md").read_text()
    assert "| chance |" in text and "**swap-alibi, needle**" in text
    assert "Tied queries (shared credit)" in text and "Scored before ties shared credit" not in text
    from hf_posenc.recipes.probes.report import markdown

    legacy = json.loads(json.dumps(results))  # a method stored before tied queries were recorded
    del legacy["methods"]["stock"]["tied_queries"]
    assert "Scored before ties shared credit, when a tie counted as a miss (tied queries not recorded): `stock`." in (
        markdown(legacy)
    )
    from hf_posenc.recipes.stats import score_interval

    acc, n = stock["acc_at_1"]["passkey"]["48"], stock["candidates"]["passkey"]["48"]
    low, high = score_interval(acc, n)
    assert low <= acc <= high and high - low > 0.1  # a handful of documents: a wide interval
    assert f"| stock | {acc:.2f} [{low:.2f}, {high:.2f}] |" in text
    (out / "results.md").unlink()  # `hf-posenc report` re-renders a probe results.json
    from hf_posenc.cli import main as cli_main

    assert cli_main(["report", str(out / "results.json")]) == 0
    assert (out / "results.md").read_text() == text

    # An interrupted run: drop one method's file; --resume re-runs only that one (and the unavailable one).
    (out / "methods" / "swap-alibi.json").unlink()
    ran = []
    from hf_posenc.recipes.probes import run as run_module

    real = run_module.run_method
    monkeypatch.setattr(run_module, "run_method", lambda c, m, s, **k: ran.append(m.name) or real(c, m, s, **k))
    resumed = run_probes(config, resume=True, progress=False)
    unavailable = results["methods"]["needs-scale"]["status"] == "unavailable"
    assert ran == ["swap-alibi"] + (["needs-scale"] if unavailable else [])  # unavailable methods are retried
    assert resumed["methods"]["stock"] == results["methods"]["stock"]
    with pytest.raises(ValueError, match="already holds probe results.*--resume"):
        run_probes(config, progress=False)
    reordered = ProbeConfig(**{**config.__dict__, "methods": config.methods[::-1], "batch_size": 2})
    assert run_probes(reordered, resume=True, progress=False)["methods"]["chunked"] == resumed["methods"]["chunked"]
    redefined = ProbeConfig(**{**config.__dict__, "methods": [ProbeMethod("chunked", chunked=True, chunk_length=32)]})
    with pytest.raises(ValueError, match="method 'chunked'.*another definition"):
        run_probes(redefined, resume=True, progress=False)
    added = ProbeConfig(
        **{
            **config.__dict__,
            "methods": [
                *config.methods,
                ProbeMethod("recurrent", encoding="learned", position_ids="recurrent", max_length=128),
            ],
        }
    )
    assert "recurrent" in run_probes(added, resume=True, progress=False)["methods"]  # new methods run
    changed = ProbeConfig(**{**config.__dict__, "settings": settings(haystack, lengths=[48, 64, 96], seed=9)})
    with pytest.raises(ValueError, match="different config.*settings"):
        run_probes(changed, resume=True, progress=False)


def test_command_line(checkpoint, haystack, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            str(checkpoint),
            "--position_ids",
            "grouped",
            "--max_length",
            "128",
            "--lengths",
            "48",
            "128",
            "--depths",
            "0",
            "1",
            "--per_depth",
            "1",
            "--haystack",
            haystack,
            "--output_dir",
            str(out),
            "--no_progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["learned grouped 128"]
    assert "| learned grouped 128 |" in capsys.readouterr().out
    # Without --lengths the default lengths past the stock model's limit are skipped and recorded as such.
    code = main(
        [
            str(checkpoint),
            "--tasks",
            "passkey",
            "--per_depth",
            "1",
            "--output_dir",
            str(tmp_path / "s"),
            "--no_progress",
        ]
    )
    stock = json.loads((tmp_path / "s" / "results.json").read_text())["methods"]["stock"]
    assert code == 0 and stock["lengths"] == [] and stock["skipped_lengths"][0] == 128
    assert main([str(checkpoint), "--lengths", "128", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--max_length 128" in capsys.readouterr().err


def test_cli_is_registered():
    from hf_posenc.cli import build_parser
    from hf_posenc.recipes.probes.run import config_from_args

    args = build_parser().parse_args(["probe", "--methods", "grouped", "chunked"])
    assert args.methods == ["grouped", "chunked"] and args.func.__name__ == "_cli_probe"
    args = build_parser().parse_args(["probe", "--methods", "grouped", "--max_length", "8192", "--lengths", "8192"])
    config = config_from_args(args)  # --max_length sets the presets' limit; no extra custom method
    assert [(m.name, m.max_length) for m in config.methods] == [("grouped", 8192)]
    assert config.settings.documents_per_depth(8192) == 4 and config.settings.documents_per_depth(2048) == 8
    with pytest.raises(ValueError, match="Unknown probe method 'groupd'"):
        config_from_args(build_parser().parse_args(["probe", "--methods", "groupd"]))


def test_study_config_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "probe_minilm.json"
    config = ProbeConfig.from_file(path)
    names = [m.name for m in config.methods]
    for required in ("stock", "chunked", "extend-copy", "grouped", "recurrent", "swap-nezha", "swap-rope"):
        assert required in names
    assert config.methods[0].lengths == [128, 256, 512]
