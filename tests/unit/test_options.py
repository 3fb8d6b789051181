"""The per-vector options are defined once: every way in (core, client, bulk, both CLI commands) shares
`VectorOptions`, and `embed` and `embed-file` read the same flags into the same values; the cache
bypass is defined once too (`RequestOptions`), and `embed-file --no-cache` reaches the client."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from embedder.bulk.cli import options_from_args
from embedder.bulk.job import BulkOptions
from embedder.cli import build_parser
from embedder.client import ClientOptions
from embedder.core.engine import EmbedOptions
from embedder.options import RequestOptions, VectorOptions, vector_flags

SHARED = {f.name for f in dataclasses.fields(RequestOptions)}


@pytest.mark.parametrize("cls", [ClientOptions, BulkOptions])
def test_each_options_class_inherits_the_shared_fields(cls: type[VectorOptions]) -> None:
    assert issubclass(cls, RequestOptions)
    own = {f.name for f in dataclasses.fields(cls)} - SHARED
    assert own  # each adds something of its own, and redefines none of the shared four
    assert not SHARED & set(inspect.get_annotations(cls))


def test_the_core_takes_the_shared_request_options() -> None:
    assert EmbedOptions is RequestOptions
    assert {f.name for f in dataclasses.fields(VectorOptions)} | {"cache"} == SHARED


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"normalize": True, "dimensions": 0, "truncate": True}),
        (
            ["--no-normalize", "--dimensions", "64", "--no-truncate"],
            {"normalize": False, "dimensions": 64, "truncate": False},
        ),
    ],
)
def test_embed_and_embed_file_read_the_same_flags(flags: list[str], expected: dict[str, object]) -> None:
    parser = build_parser()
    embed = parser.parse_args(["embed", "a text", *flags])
    embed_file = parser.parse_args(["embed-file", "in.jsonl", "--out", "out.npy", *flags])
    assert vector_flags(embed) == expected
    bulk = options_from_args(embed_file)
    assert bulk.vector_fields() == expected
    assert EmbedOptions(**vector_flags(embed)) == bulk.embed_options()


def test_embed_file_no_cache_reaches_the_client_options() -> None:
    parser = build_parser()
    default = options_from_args(parser.parse_args(["embed-file", "in.jsonl", "--out", "out.npy"]))
    bypass = options_from_args(parser.parse_args(["embed-file", "in.jsonl", "--out", "o.npy", "--no-cache"]))
    assert (default.cache, bypass.cache) == (True, False)
    assert ClientOptions(**bypass.request_fields()).request(["a"]).cache is False
    assert bypass.embed_options() == EmbedOptions(cache=False)
    # The bypass changes no vector, so a job resumed with or without it reuses its shards.
    assert bypass.fingerprint() == default.fingerprint()
