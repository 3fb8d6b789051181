"""Per-token teacher targets: the store's layout, its resume, and the loss and model view that use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import losses, token_targets  # noqa: E402
from training.data import TokenizedCorpus, pad_batch  # noqa: E402
from training.model import CNNEncoder, ModelConfig, WithPositions  # noqa: E402
from training.teacher import TEACHER_DIM  # noqa: E402

CLS, SEP, PAD = 101, 102, 0


def corpus_of(lengths: list[int]) -> TokenizedCorpus:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(1000, 2000, n).astype(np.int32) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedCorpus(np.concatenate(pieces), offsets)


def fake_hidden(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A 'teacher' whose state at a position encodes (token id, position, row length): checkable."""
    out = np.zeros((*ids.shape, TEACHER_DIM), np.float32)
    out[..., 0] = ids / 1000.0
    out[..., 1] = np.arange(ids.shape[1])[None, :]
    out[..., 2] = mask.sum(axis=1, keepdims=True)
    return out


def expected(corpus: TokenizedCorpus, i: int) -> np.ndarray:
    ids, mask = pad_batch([corpus.get(i)], CLS, SEP, PAD)
    return fake_hidden(ids, mask)[0].astype(np.float16)


def test_each_text_gets_its_positions_in_order_whatever_batch_it_ran_in(tmp_path: Path) -> None:
    corpus = corpus_of([3, 7, 1, 5, 2])
    path = tmp_path / "t.f16"
    store = token_targets.build(corpus, path, lambda: fake_hidden, (CLS, SEP, PAD), batch_size=2)
    offsets = token_targets.row_offsets(corpus)
    assert store.shape == (3 + 7 + 1 + 5 + 2 + 2 * 5, TEACHER_DIM)
    for i in range(len(corpus)):
        np.testing.assert_array_equal(store[offsets[i] : offsets[i + 1]], expected(corpus, i))


def test_an_interrupted_build_resumes_at_its_last_whole_chunk(tmp_path: Path) -> None:
    corpus = corpus_of([4, 2, 6, 3, 5])
    path = tmp_path / "t.f16"
    calls: list[int] = []

    def failing(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(len(ids))
        if sum(calls) > 2:
            raise KeyboardInterrupt
        return fake_hidden(ids, mask)

    with pytest.raises(KeyboardInterrupt):
        token_targets.build(corpus, path, lambda: failing, (CLS, SEP, PAD), batch_size=2, chunk=2)
    assert not path.exists()
    assert json.loads(path.with_name("t.f16.progress.json").read_text()) == {"texts": 2}
    calls.clear()
    store = token_targets.build(corpus, path, lambda: fake_hidden, (CLS, SEP, PAD), chunk=2)
    offsets = token_targets.row_offsets(corpus)
    for i in range(len(corpus)):
        np.testing.assert_array_equal(store[offsets[i] : offsets[i + 1]], expected(corpus, i))
    loaded: list[int] = []
    token_targets.build(corpus, path, lambda: loaded.append(1) or fake_hidden, (CLS, SEP, PAD))
    assert loaded == []  # a finished store loads no teacher


def test_gather_lays_targets_out_as_the_collator_lays_out_ids(tmp_path: Path) -> None:
    corpus = corpus_of([3, 1, 4])
    store = token_targets.build(corpus, tmp_path / "t.f16", lambda: fake_hidden, (CLS, SEP, PAD))
    rows = np.array([2, 0])
    ids, _ = pad_batch([corpus.get(int(i)) for i in rows], CLS, SEP, PAD)
    target, valid = token_targets.gather(store, token_targets.row_offsets(corpus), rows, ids.shape[1])
    assert valid.tolist() == [[True] * 6, [True] * 5 + [False]]
    np.testing.assert_allclose(target[1, :5, 0].numpy(), ids[1, :5] / 1000.0, rtol=1e-3)
    assert float(target[1, 5].abs().sum()) == 0.0


def test_token_loss_is_zero_on_a_match_one_on_the_mean_and_ignores_invalid_positions() -> None:
    teacher = torch.randn(2, 4, 8)
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert float(losses.token_states(teacher.clone(), teacher, valid)) == pytest.approx(0.0)
    mean = teacher[valid].mean(dim=0)
    assert float(losses.token_states(mean.expand(2, 4, 8).clone(), teacher, valid)) == pytest.approx(1.0)
    noisy = teacher.clone()
    noisy[~valid] += 100.0
    assert float(losses.token_states(noisy, teacher, valid)) == pytest.approx(0.0)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_the_training_view_gives_the_exported_embedding_and_mean_pooling_is_the_positions_mean(
    pooling: str,
) -> None:
    torch.manual_seed(0)
    model = CNNEncoder(ModelConfig(vocab_size=50, embed_dim=16, channels=16, out_dim=12, pooling=pooling))
    model.eval()
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    with torch.no_grad():
        pooled, positions = WithPositions(model)(ids, mask)
        torch.testing.assert_close(pooled, model(ids, mask))
        if pooling == "mean":
            m = mask[..., None].float()
            torch.testing.assert_close(pooled, (positions * m).sum(1) / m.sum(1), rtol=1e-4, atol=1e-5)


def test_a_separate_head_trains_the_trunk_but_stays_out_of_the_model() -> None:
    torch.manual_seed(0)
    model = CNNEncoder(ModelConfig(vocab_size=50, embed_dim=16, channels=16, out_dim=12))
    view = WithPositions(model, separate_head=True)
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    _, positions = view(ids, mask)
    assert positions.shape == (2, 7, 12)
    positions.sum().backward()
    assert view.head is not None and view.head.weight.grad is not None
    assert model.embed.weight.grad is not None and model.proj.weight.grad is None  # not through proj
    assert not any(k.startswith("head") for k in model.state_dict())
