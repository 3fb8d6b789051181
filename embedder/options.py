"""The options every way in asks of each vector: defined once, shared by the core, the client, bulk jobs
and the CLI (`embed`, `embed-file`). `VectorOptions` holds the three that change a vector;
`RequestOptions` adds the one a server call may also ask (the embedding cache bypass), shared by the
core's `EmbedOptions`, the client's `ClientOptions` and `BulkOptions` (`embed-file --address`). Each of
those adds only what is its own (the wire encoding and retries, the catalogue fields) by subclassing.
Every field is keyword-only: call sites name them, so inheriting the shared fields reorders no one's
arguments."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class VectorOptions:
    """Normalize to unit length, keep the first `dimensions` (Matryoshka; 0 = all), and cut texts over
    the model's max_tokens (False: such a text is an error)."""

    normalize: bool = True
    dimensions: int = 0
    truncate: bool = True

    def vector_fields(self) -> dict[str, Any]:
        """These three options as keyword arguments, e.g. to build another `VectorOptions` subclass."""
        return _fields(self, VectorOptions)


@dataclass(frozen=True, kw_only=True)
class RequestOptions(VectorOptions):
    """`VectorOptions` and whether the server's embedding cache may answer: False neither reads nor fills
    it (e.g. a one-off pass over a whole catalogue, which would only push out the popular items). It
    never changes a vector's value, only where it comes from; in-process embedding has no cache."""

    cache: bool = True

    def request_fields(self) -> dict[str, Any]:
        """These four options as keyword arguments, e.g. to build another `RequestOptions` subclass."""
        return _fields(self, RequestOptions)


def _fields(options: VectorOptions, cls: type[VectorOptions]) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}


def add_vector_flags(parser: argparse.ArgumentParser, verb: str = "return") -> None:
    """--no-normalize, --dimensions, --no-truncate (`verb`: what the command does with the vectors)."""
    parser.add_argument("--no-normalize", action="store_true", help=f"{verb} raw pooled embeddings")
    parser.add_argument("--dimensions", type=int, default=0, help="Matryoshka truncation (0 = full)")
    parser.add_argument("--no-truncate", action="store_true", help="fail on texts over max_tokens")


def add_cache_flag(parser: argparse.ArgumentParser) -> None:
    """--no-cache: for commands that embed through servers (`embed-file --address`)."""
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="with --address: the servers neither read nor fill their embedding cache (a one-off pass "
        "over a catalogue would only push out the popular items); in-process embedding has no cache",
    )


def vector_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options `add_vector_flags` parsed, as keyword arguments of a `VectorOptions` subclass."""
    return {
        "normalize": not args.no_normalize,
        "dimensions": args.dimensions,
        "truncate": not args.no_truncate,
    }


def request_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options `add_vector_flags` and `add_cache_flag` parsed, as keyword arguments of a
    `RequestOptions` subclass."""
    return {**vector_flags(args), "cache": not args.no_cache}
