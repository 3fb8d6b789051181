"""The options every way in asks of each vector: defined once, shared by the core, the client, bulk jobs
and the CLI (`embed`, `embed-file`). Each of those adds only what is its own (the cache bypass, the wire
encoding and retries, the catalogue fields) by subclassing `VectorOptions`. Every field is keyword-only:
call sites name them, so inheriting the shared three reorders no one's arguments."""

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
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(VectorOptions)}


def add_vector_flags(parser: argparse.ArgumentParser, verb: str = "return") -> None:
    """--no-normalize, --dimensions, --no-truncate (`verb`: what the command does with the vectors)."""
    parser.add_argument("--no-normalize", action="store_true", help=f"{verb} raw pooled embeddings")
    parser.add_argument("--dimensions", type=int, default=0, help="Matryoshka truncation (0 = full)")
    parser.add_argument("--no-truncate", action="store_true", help="fail on texts over max_tokens")


def vector_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options `add_vector_flags` parsed, as keyword arguments of a `VectorOptions` subclass."""
    return {
        "normalize": not args.no_normalize,
        "dimensions": args.dimensions,
        "truncate": not args.no_truncate,
    }
