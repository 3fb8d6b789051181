"""Content-addressed cache of teacher embeddings: one row per distinct text, found by the text's digest.

The teacher is the most expensive stage of the job, so its work must never be thrown away when the
corpus changes: adding a source, generating minimal pairs or growing the held-out sample only costs the
texts that are new. The store is a folder of immutable chunk files, each holding the digests of its texts
and their float16 embeddings; a chunk is written to a temporary name and renamed, so an interrupt loses
at most the chunk in flight and a re-run computes only what is missing.

    store = TargetStore(Path(".cache/teacher/store"), namespace="all-MiniLM-L6-v2@128")
    store.ensure(texts, encode)      # computes and saves the missing ones, chunk by chunk
    targets = store.lookup(texts)    # float16 [N, 384], in the order of `texts`

The namespace (teacher name and max tokens) is part of every digest, so vectors of another teacher or
truncation are never returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

DIGEST_BYTES = 16
Encoder = Callable[[list[str]], np.ndarray]


def text_key(text: str, namespace: str) -> bytes:
    """16-byte digest of (namespace, exact text): the store's key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES, key=namespace.encode()).digest()


class TargetStore:
    """Teacher vectors keyed by text digest, persisted as immutable chunk files under `root`."""

    def __init__(self, root: Path, namespace: str, dim: int) -> None:
        self.root, self.namespace, self.dim = root, namespace, dim
        self._rows: dict[bytes, tuple[int, int]] = {}
        self._chunks: list[np.ndarray] = []
        self._load()

    def _load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "store.json"
        want = {"namespace": self.namespace, "dim": self.dim, "format": 1}
        if meta.exists():
            if json.loads(meta.read_text()) != want:
                raise ValueError(f"{self.root} holds vectors of {meta.read_text()}, not {want}")
        else:  # several ranks may open the store at once: write aside and rename, never truncate in place
            with tempfile.NamedTemporaryFile("w", dir=self.root, suffix=".tmp", delete=False) as fh:
                fh.write(json.dumps(want))
            Path(fh.name).replace(meta)
        for path in sorted(self.root.glob("chunk-*.npz")):
            data = np.load(path)
            chunk_no = len(self._chunks)
            self._chunks.append(data["vectors"])
            for row, digest in enumerate(data["digests"]):
                self._rows.setdefault(digest.tobytes(), (chunk_no, row))

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self, texts: Sequence[str]) -> list[bytes]:
        return [text_key(t, self.namespace) for t in texts]

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Distinct texts with no stored vector, in first-seen order."""
        out, seen = [], set()
        for text, key in zip(texts, self.keys(texts), strict=True):
            if key not in self._rows and key not in seen:
                seen.add(key)
                out.append(text)
        return out

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Persist one chunk (atomic rename) and index it."""
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"vectors {vectors.shape} for {len(texts)} texts of dim {self.dim}")
        digests = np.frombuffer(b"".join(self.keys(texts)), dtype=np.uint8).reshape(-1, DIGEST_BYTES)
        chunk_no = len(self._chunks)
        path = self.root / f"chunk-{chunk_no:06d}.npz"
        while path.exists():  # another writer's chunk: never overwrite
            chunk_no += 1
            path = self.root / f"chunk-{chunk_no:06d}.npz"
        tmp = path.with_name(path.stem + ".tmp.npz")
        vecs = vectors.astype(np.float16)
        with tmp.open("wb") as fh:
            np.savez(fh, digests=digests, vectors=vecs)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        while len(self._chunks) < chunk_no:
            self._chunks.append(np.zeros((0, self.dim), np.float16))
        self._chunks.append(vecs)
        for row, digest in enumerate(digests):
            self._rows.setdefault(digest.tobytes(), (chunk_no, row))

    def ensure(self, texts: Sequence[str], encode: Encoder, chunk: int = 4096, desc: str = "teacher") -> int:
        """Compute and store every missing text's vector; returns how many were computed."""
        todo = self.missing(texts)
        if not todo:
            return 0
        with tqdm(total=len(todo), desc=desc, unit="text", smoothing=0.05) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                self.add(part, encode(part))
                bar.update(len(part))
        return len(todo)

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """float16 [N, dim] in the order of `texts`; KeyError names the first text not stored."""
        out = np.empty((len(texts), self.dim), dtype=np.float16)
        for i, (text, key) in enumerate(zip(texts, self.keys(texts), strict=True)):
            where = self._rows.get(key)
            if where is None:
                raise KeyError(f"no teacher vector stored for {text[:60]!r}")
            out[i] = self._chunks[where[0]][where[1]]
        return out
