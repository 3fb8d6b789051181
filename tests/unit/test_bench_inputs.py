"""Benchmark input sets: held-out Debian items of 20-40 words, a user's file, and the named fallbacks;
and the focused subcommands (`serving`) reading them through the shared loader.

The apt lists here are written by the test (an uncompressed Translation-en file), so the test is the
same on every machine; the real lists are read by `streamrec-bench --quick` (test_bench_quick.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.inputs import CORPUS_CONFIG, ITEM_WORDS, Inputs, load_inputs
from training.corpus import is_heldout, load_corpus_config, text_digest

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "omicron",
    "sigma",
    "tau",
    "upsilon",
]


def _description(i: int, words: int) -> list[str]:
    body = " ".join(WORDS[(i + k) % len(WORDS)] + str(i) for k in range(words))
    return [f"Description-en: tool number {i} for tests", f" {body}", " .", " A second paragraph."]


@pytest.fixture
def apt_lists(tmp_path: Path) -> Path:
    """600 packages: long enough items (25 words) and ones too short (5) or too long (60)."""
    lines: list[str] = []
    for i in range(600):
        words = (25, 5, 60)[i % 3]
        lines += [f"Package: pkg{i}", *_description(i, words), ""]
    (tmp_path / "example_dists_main_i18n_Translation-en").write_text("\n".join(lines), encoding="utf-8")
    return tmp_path


def test_items_are_held_out_catalogue_texts_of_20_to_40_words(apt_lists: Path, tmp_path: Path) -> None:
    inputs = load_inputs(10_000, input_set="items", apt_lists=apt_lists, heldout=tmp_path / "none.jsonl")
    corpus = load_corpus_config(CORPUS_CONFIG)
    assert inputs.name == "items" and inputs.texts
    for text in inputs.texts:
        assert ITEM_WORDS[0] <= len(text.split()) <= ITEM_WORDS[1], text
        assert text.startswith("Tool number ") and "for tests. " in text, text
        assert is_heldout(text_digest(text, corpus.seed), corpus.heldout_fraction), text
    # ~5% of the 200 packages of the right length: held-out only, and none of the others.
    assert len(inputs.texts) < 40
    again = load_inputs(10_000, input_set="items", apt_lists=apt_lists, heldout=tmp_path / "none.jsonl")
    assert again.texts == inputs.texts and again.describe() == inputs.describe()
    other_seed = load_inputs(10_000, seed=1, input_set="items", apt_lists=apt_lists)
    assert sorted(other_seed.texts) == sorted(inputs.texts) and other_seed.texts != inputs.texts


def test_without_apt_lists_the_items_fall_back_and_say_so(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": f"held-out text {i}"}) + "\n" for i in range(50)))
    inputs = load_inputs(10, input_set="items", apt_lists=tmp_path / "no-lists", heldout=heldout)
    assert inputs.name == "heldout" and inputs.source == str(heldout) and len(inputs.texts) == 10
    assert inputs.note.startswith("fallback from set items (no *_i18n_Translation-en* lists in ")
    assert load_inputs(10, input_set="heldout", heldout=heldout).note == "held-out split of the corpus"


def test_a_users_file_jsonl_or_txt(tmp_path: Path) -> None:
    jsonl = tmp_path / "catalogue.jsonl"
    rows = [{"title": f"Movie {i}", "description": "A quiet drama."} for i in range(5)]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    inputs = load_inputs(3, texts_file=jsonl)
    assert inputs.name == "file" and inputs.source == str(jsonl) and len(inputs.texts) == 3
    assert all(t.startswith("Movie ") and t.endswith("A quiet drama.") for t in inputs.texts)
    txt = tmp_path / "catalogue.txt"
    txt.write_text("first item\n\nsecond item\nfirst item\n", encoding="utf-8")
    assert sorted(load_inputs(10, texts_file=txt).texts) == ["first item", "second item"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: needs a \"text\" field"):
        load_inputs(10, texts_file=bad)


def test_an_unknown_set_is_refused() -> None:
    with pytest.raises(ValueError, match="must be one of"):
        load_inputs(10, input_set="everything")


def test_cache_streams_zipf_repeats_popular_items_unique_never_repeats(apt_lists: Path) -> None:
    from benchmarks.cache_bench import catalogue, unique_stream, zipf_stream

    items = catalogue(1000, apt_lists=apt_lists)
    assert len(set(items)) == 1000  # 200 Debian items of the right length, then tagged copies
    assert items[999].endswith(")") and "(edition " in items[999]
    draws = zipf_stream(items, 20_000, seed=3)
    counts = sorted((draws.count(t) for t in set(draws)), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]  # a few items take a large share
    assert zipf_stream(items, 100, seed=3) == zipf_stream(items, 100, seed=3)
    unique = unique_stream(items, 5000)
    assert len(set(unique)) == 5000


def _serving_report(inputs: Inputs) -> dict[str, Any]:
    """A report of the shape `run_serving_benchmark` returns, with made-up figures (nothing is measured)."""
    from benchmarks.serving import TARGETS

    extra = (
        "in_process_items_per_s",
        "server_cpu_ms_per_item",
        "in_process_cpu_ms_per_item",
        "cpu_efficiency",
    )
    return {
        "inputs": inputs.describe(),
        "environment": {"cpu_model": "a test CPU", "cpu_flags": ["avx2"]},
        "summary": dict.fromkeys([*TARGETS, *extra], 1.0),
        "targets": TARGETS,
        "best_config": {},
        "load_avg_at_end": [0.0, 0.0, 0.0],
    }


@pytest.mark.parametrize(
    "case", [([], "items"), (["--inputs", "heldout"], "heldout"), (["--texts", "mine"], "file")]
)
def test_serving_subcommand_loads_the_shared_input_sets_and_names_the_set(
    apt_lists: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[list[str], str],
) -> None:
    """`streamrec-bench serving` takes its texts from the shared loader (default: the item set) and its
    report and table name the set. The benchmark itself is replaced: only what it was given is checked."""
    import benchmarks.inputs
    import benchmarks.serving
    from benchmarks.cli import build_parser, main

    flags, expected = case
    defaults = build_parser().parse_args(["serving"])
    assert (defaults.inputs, defaults.texts, defaults.input_texts) == ("items", None, 4096)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": f"held-out text {i}"}) + "\n" for i in range(50)))
    (tmp_path / "mine").write_text("my first item\nmy second item\n", encoding="utf-8")
    real = benchmarks.inputs.load_inputs
    monkeypatch.setattr(
        benchmarks.inputs, "load_inputs", lambda *a, **k: real(*a, **k, apt_lists=apt_lists, heldout=heldout)
    )
    given: list[Inputs] = []

    def run(bundle: Path, inputs: Inputs, rounds: int, seconds: float) -> dict[str, Any]:
        given.append(inputs)
        return _serving_report(inputs)

    monkeypatch.setattr(benchmarks.serving, "run_serving_benchmark", run)
    monkeypatch.chdir(tmp_path)
    assert main(["serving", "--bundle", "b", "--out", "report.json", *flags]) == 0
    assert [i.name for i in given] == [expected] and given[0].texts
    if expected == "items":
        assert all(ITEM_WORDS[0] <= len(t.split()) <= ITEM_WORDS[1] for t in given[0].texts)
    assert f"Inputs: set `{expected}`, {len(given[0].texts)} texts" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["inputs"]["set"] == expected
