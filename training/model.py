"""The student: a residual depthwise-separable 1D CNN over WordPiece tokens.

Laid out for the fast ONNX Runtime form measured in docs/performance.md: activations are NCHW with
H=1 so every conv exports as `Conv` (BatchNorm folds into it) and ReLU follows; no LayerNorm, GELU or GLU.

    ids -> Embedding(V, E) -> [B, E, 1, T] -> (1x1 stem to C if E != C)
        -> blocks: x + BN(pw(ReLU(BN(dw_dilated(x))))) then ReLU, padding zeroed after each block
        -> (optional, off by default) self-attention layers over the real tokens
        -> masked mean of [features ; embeddings]  (the static "bag of tokens" skip)
        -> Linear(C + E -> dim)

Padding is zeroed after every block so a text's embedding does not depend on how much padding its
batch-mates forced on it (the server groups by length, but exactness is worth ~10% here).
Pooling is a masked mean followed by one linear map, so the embedding is an exact sum of per-token
contributions (the Explain feature relies on this): `token_features()` exposes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 30522
    embed_dim: int = 128
    channels: int = 128
    kernel_size: int = 3
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    out_dim: int = 384
    static_skip: bool = True
    pad_token_id: int = 0
    # Blocks (0-based) after which a global-context step adds a projection of the text's masked mean
    # to every position: whole-text context for a per-text (not per-token) cost of C^2 MACs.
    global_context: list[int] = field(default_factory=list)
    # "mean": masked mean of the token features. "attention": a learned weight per token (softmax over
    # the text of a 1x1 score on the conv features, C MACs/token), so words like "not" can count for more
    # than their share. Both keep the embedding an exact sum of per-token contributions (Explain).
    pooling: str = "mean"
    # Self-attention layers after the convolutions (one head over the C channels, residual, zero-initialised
    # output): whole-text mixing per position, 4C^2 + 2TC MACs per token, about the conv stack's cost again.
    attention_layers: int = 0
    # How the conv stack gets C channels from an embedding of E > C: "conv" (a 1x1 conv, E*C MACs per
    # token) or "slice" (its first C dimensions, no MACs; the rest feed only the static skip).
    stem: str = "conv"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SeparableBlock(nn.Module):
    """Depthwise dilated conv + BN + ReLU, pointwise conv + BN, residual add, ReLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.dw = nn.Conv2d(
            channels,
            channels,
            (1, kernel_size),
            padding=(0, pad),
            dilation=(1, dilation),
            groups=channels,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: training begins from the skip path

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.dw(x)))
        h = self.bn2(self.pw(h))
        return torch.relu(x + h) * mask


class GlobalContext(nn.Module):
    """x + W·mean_t(x) at every position, then ReLU and the padding mask (starts as identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        mean = x.sum(dim=3, keepdim=True) / count  # [B, C, 1, 1]; x is zero at padding
        return torch.relu(x + self.proj(mean)) * mask


class SelfAttention(nn.Module):
    """x + W_o · softmax(QK^T / sqrt(C)) V over the text's real tokens, then the padding mask.

    1x1 convs on [B, C, 1, T] so the graph stays in the layout the convolutions use; W_o starts at zero,
    so the layer starts as the identity and training begins from the CNN it follows."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)
        self.scale = channels**-0.5

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).squeeze(2).chunk(3, dim=1)  # [B, C, T] each
        scores = torch.bmm(q.transpose(1, 2), k) * self.scale  # [B, T, T]
        keys = mask.squeeze(1)  # [B, 1, T]: padding keys get -1e4, never a whole row (a text has >= 1 token)
        weights = torch.softmax(scores + (keys - 1.0) * 1e4, dim=2)
        mixed = torch.bmm(v, weights.transpose(1, 2)).unsqueeze(2)  # [B, C, 1, T]
        return (x + self.out(mixed)) * mask


class CNNEncoder(nn.Module):
    """Inputs `input_ids`, `attention_mask` int64 [B, T]; output pooled embeddings float32 [B, out_dim]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {cfg.kernel_size}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_token_id)
        if cfg.stem not in ("conv", "slice"):
            raise ValueError(f"stem must be conv or slice, got {cfg.stem!r}")
        if cfg.stem == "slice" and cfg.embed_dim < cfg.channels:
            raise ValueError(f"stem slice needs embed_dim >= channels, got {cfg.embed_dim} < {cfg.channels}")
        self.stem: nn.Module = (
            nn.Identity() if not _has_stem_conv(cfg) else nn.Conv2d(cfg.embed_dim, cfg.channels, 1)
        )
        self.blocks = nn.ModuleList(SeparableBlock(cfg.channels, cfg.kernel_size, d) for d in cfg.dilations)
        bad = [i for i in cfg.global_context if not 0 <= i < len(cfg.dilations)]
        if bad:
            raise ValueError(f"global_context block indices {bad} out of range 0..{len(cfg.dilations) - 1}")
        self.contexts = nn.ModuleDict({str(i): GlobalContext(cfg.channels) for i in cfg.global_context})
        self.attention = nn.ModuleList(SelfAttention(cfg.channels) for _ in range(cfg.attention_layers))
        pooled = cfg.channels + (cfg.embed_dim if cfg.static_skip else 0)
        self.proj = nn.Linear(pooled, cfg.out_dim)
        if cfg.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be mean or attention, got {cfg.pooling!r}")
        self.score: nn.Conv2d | None = None
        if cfg.pooling == "attention":
            self.score = nn.Conv2d(cfg.channels, 1, 1)
            nn.init.zeros_(self.score.weight)  # starts as the mean

    def _trunk(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv features [B, C, 1, T], embeddings [B, E, 1, T]), both zero at padding.

        The PAD row of the embedding is zero (padding_idx), so padded positions need no mask here.
        """
        mask = attention_mask.to(torch.float32)[:, None, None, :]  # [B, 1, 1, T]
        e = self.embed(input_ids).transpose(1, 2).unsqueeze(2)  # [B, E, 1, T]
        if _has_stem_conv(self.cfg):
            x = self.stem(e) * mask
        else:  # the whole embedding, or its first C dimensions (stem "slice")
            x = e if self.cfg.embed_dim == self.cfg.channels else e[:, : self.cfg.channels]
        count = mask.sum(dim=3, keepdim=True).clamp(min=1)  # [B, 1, 1, 1]
        for i, block in enumerate(self.blocks):
            x = block(x, mask)
            if str(i) in self.contexts:
                x = self.contexts[str(i)](x, mask, count)
        for layer in self.attention:
            x = layer(x, mask)
        return x, e

    def pool_weights(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each position's pooling weight [B, 1, 1, T]: 1/n (mean) or a softmax over the text's tokens."""
        mask = attention_mask.to(x.dtype)[:, None, None, :]
        if self.score is None:
            return mask / mask.sum(dim=3, keepdim=True).clamp(min=1)
        s = self.score(x)  # [B, 1, 1, T]
        # Max over real tokens only (padding gets -1e4), so exp never underflows a whole text.
        top = (s * mask + (mask - 1.0) * 1e4).amax(dim=3, keepdim=True)
        w = torch.exp(s - top) * mask
        return w / w.sum(dim=3, keepdim=True).clamp(min=1e-12)

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-position pooled-space features [B, T, C(+E)], zero at padding, already weighted: the
        embedding is exactly proj.weight @ their sum + proj.bias."""
        x, e = self._trunk(input_ids, attention_mask)
        w = self.pool_weights(x, attention_mask)
        feats = torch.cat([x, e], dim=1) if self.cfg.static_skip else x
        return (feats * w).squeeze(2).transpose(1, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x, e = self._trunk(input_ids, attention_mask)
        return self._pool(x, e, attention_mask)

    def position_features(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Each position's pooled-space features, unweighted, [B, T, C(+E)]."""
        feats = torch.cat([x, e], dim=1) if self.cfg.static_skip else x
        return feats.squeeze(2).transpose(1, 2)

    def position_outputs(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The projection of each position's features alone, [B, T, out_dim]: what the embedding would be
        if the text were that one position. With mean pooling the embedding is their masked mean."""
        return self.proj(self.position_features(x, e))  # type: ignore[no-any-return]

    def _pool(self, x: torch.Tensor, e: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.score is None:
            count = attention_mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
            # Pool each part first, then concatenate the small [B, C+E] (cheaper than concatenating maps).
            pooled = x.sum(dim=(2, 3))
            if self.cfg.static_skip:
                pooled = torch.cat([pooled, e.sum(dim=(2, 3))], dim=1)
            return self.proj(pooled / count)  # type: ignore[no-any-return]
        w = self.pool_weights(x, attention_mask)
        pooled = (x * w).sum(dim=(2, 3))
        if self.cfg.static_skip:
            pooled = torch.cat([pooled, (e * w).sum(dim=(2, 3))], dim=1)
        return self.proj(pooled)  # type: ignore[no-any-return]


class WithPositions(nn.Module):
    """Training view of an encoder: (embeddings [B, out_dim], position outputs [B, T, out_dim]) from one
    pass, for the per-token distillation term. A module of its own so DDP can wrap it. With
    `separate_head`, positions go through a linear map of their own (training only, not exported)."""

    def __init__(self, encoder: CNNEncoder, separate_head: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        width = encoder.proj.in_features
        self.head = nn.Linear(width, encoder.cfg.out_dim) if separate_head else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, e = self.encoder._trunk(input_ids, attention_mask)
        pooled = self.encoder._pool(x, e, attention_mask)
        if self.head is None:
            return pooled, self.encoder.position_outputs(x, e)
        return pooled, self.head(self.encoder.position_features(x, e))


def changed_model_fields(saved: dict[str, Any], cfg: ModelConfig) -> list[str]:
    """The [model] fields in which a saved config (a checkpoint's or a bundle's) differs from `cfg`. Rebuilt
    as load_model does: keys the saved one predates take ModelConfig's defaults."""
    old = ModelConfig(**saved)
    return [name for name in asdict(cfg) if getattr(old, name) != getattr(cfg, name)]


def _has_stem_conv(cfg: ModelConfig) -> bool:
    return cfg.embed_dim != cfg.channels and cfg.stem == "conv"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_token(cfg: ModelConfig) -> int:
    """Multiply-accumulates per token position, excluding the embedding lookup (a gather)."""
    stem = cfg.embed_dim * cfg.channels if _has_stem_conv(cfg) else 0
    block = cfg.channels * cfg.kernel_size + cfg.channels * cfg.channels
    score = cfg.channels if cfg.pooling == "attention" else 0
    # Self-attention at 32 tokens (the item texts' typical length): 4C^2 projections + 2TC for QK^T and AV.
    attention = cfg.attention_layers * (4 * cfg.channels * cfg.channels + 2 * 32 * cfg.channels)
    # Global context costs C^2 per text, not per token: not counted per token.
    return stem + block * len(cfg.dilations) + score + attention


def architecture_summary(cfg: ModelConfig) -> str:
    dil = "/".join(str(d) for d in cfg.dilations)
    skip = " + static bag-of-embeddings skip" if cfg.static_skip else ""
    if cfg.global_context:
        skip += f", global context after blocks {'/'.join(str(i + 1) for i in cfg.global_context)}"
    if cfg.attention_layers:
        skip += f", {cfg.attention_layers} self-attention layer(s) after the blocks"
    if cfg.embed_dim > cfg.channels:
        skip += (
            ", 1x1 stem conv E->C"
            if cfg.stem == "conv"
            else f", conv stack on the first {cfg.channels} dims of E"
        )
    return (
        f"residual depthwise-separable 1D CNN: E={cfg.embed_dim}, {len(cfg.dilations)} blocks at "
        f"{cfg.channels} ch, k={cfg.kernel_size}, dilations {dil}, BN+ReLU, masked {cfg.pooling} pool{skip}, "
        f"linear -> {cfg.out_dim}"
    )
