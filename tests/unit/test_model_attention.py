"""The optional self-attention layers of the student: a text's embedding does not depend on its batch's
padding, stays an exact sum of per-token contributions (Explain), and exports to ONNX unchanged. And the
sliced stem of a wider embedding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.export import export_onnx, parity  # noqa: E402
from training.model import CNNEncoder, ModelConfig, macs_per_token  # noqa: E402


def trained_looking(layers: int) -> CNNEncoder:
    """A small encoder whose attention output maps are non-zero (they start at zero: the identity)."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=16, channels=16, out_dim=12, pooling="attention", attention_layers=layers)
    model = CNNEncoder(cfg)
    with torch.no_grad():
        for layer in model.attention:
            for p in layer.out.parameters():
                p.normal_(std=0.5)
    return model.eval()


def batch(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_a_new_layer_is_the_identity_and_costs_4c2_plus_2tc_per_token() -> None:
    torch.manual_seed(0)
    plain = CNNEncoder(ModelConfig(embed_dim=16, channels=16, out_dim=12))
    torch.manual_seed(0)
    with_layer = CNNEncoder(ModelConfig(embed_dim=16, channels=16, out_dim=12, attention_layers=1))
    with_layer.load_state_dict(plain.state_dict(), strict=False)
    ids, mask = batch([5, 9], 9)
    torch.testing.assert_close(with_layer.eval()(ids, mask), plain.eval()(ids, mask))
    assert macs_per_token(with_layer.cfg) - macs_per_token(plain.cfg) == 4 * 16 * 16 + 2 * 32 * 16


@pytest.mark.parametrize("layers", [1, 2])
def test_padding_does_not_reach_a_text_and_the_embedding_is_its_tokens_sum(layers: int) -> None:
    assert_padding_free_and_a_sum_of_tokens(trained_looking(layers))


def assert_padding_free_and_a_sum_of_tokens(model: CNNEncoder) -> None:
    ids, mask = batch([4, 11, 7], 11)
    with torch.no_grad():
        together = model(ids, mask)
        alone = torch.cat([model(ids[i : i + 1, :n], mask[i : i + 1, :n]) for i, n in enumerate([4, 11, 7])])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
        summed = model.token_features(ids, mask).sum(dim=1) @ model.proj.weight.T + model.proj.bias
        torch.testing.assert_close(summed, together, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", ["attention", "sliced"])
def test_the_onnx_graph_computes_what_torch_does(tmp_path: Path, shape: str) -> None:
    model = trained_looking(1) if shape == "attention" else sliced_wide()
    path = export_onnx(model, tmp_path / "model.onnx")
    batches = [tuple(t.numpy().astype(np.int64) for t in batch(n, max(n))) for n in ([3, 8], [17, 40, 2])]
    assert parity(model, path, batches) < 1e-5  # type: ignore[arg-type]


def test_a_sliced_stem_feeds_the_convs_the_first_c_dims_and_costs_no_macs() -> None:
    cfg = ModelConfig(embed_dim=24, channels=16, dilations=[1, 2], static_skip=False, stem="slice")
    model = CNNEncoder(cfg).eval()
    assert isinstance(model.stem, torch.nn.Identity)
    assert macs_per_token(cfg) == macs_per_token(dataclasses.replace(cfg, embed_dim=16))
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = model(ids, mask)
        model.embed.weight[:, 16:].normal_()  # without the static skip, dims >= C reach nothing
        assert torch.allclose(model(ids, mask), before)
    with pytest.raises(ValueError, match="embed_dim >= channels"):
        CNNEncoder(dataclasses.replace(cfg, embed_dim=8))


def sliced_wide() -> CNNEncoder:
    """The probed shape: an embedding wider than the convs (sliced stem), static skip, attention pooling."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=24, channels=16, out_dim=12, pooling="attention", stem="slice")
    model = CNNEncoder(cfg)
    with torch.no_grad():
        assert model.score is not None
        model.score.weight.normal_(std=0.5)  # it starts at zero: the mean
    return model.eval()


def test_a_sliced_wide_embedding_keeps_padding_out_and_the_embedding_a_sum_of_tokens() -> None:
    assert_padding_free_and_a_sum_of_tokens(sliced_wide())
