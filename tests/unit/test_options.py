"""The per-vector options are defined once: every way in (core, client, bulk, both CLI commands) shares
`VectorOptions`, and `embed` and `embed-file` read the same flags into the same values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from embedder.bulk.cli import options_from_args
from embedder.bulk.job import BulkOptions
from embedder.cli import build_parser
from embedder.client import ClientOptions
from embedder.core.engine import EmbedOptions
from embedder.options import VectorOptions, vector_flags

SHARED = {f.name for f in dataclasses.fields(VectorOptions)}


@pytest.mark.parametrize("cls", [EmbedOptions, ClientOptions, BulkOptions])
def test_each_options_class_inherits_the_shared_fields(cls: type[VectorOptions]) -> None:
    assert issubclass(cls, VectorOptions)
    own = {f.name for f in dataclasses.fields(cls)} - SHARED
    assert own  # each adds something of its own, and redefines none of the shared three
    assert not SHARED & set(inspect.get_annotations(cls))


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
