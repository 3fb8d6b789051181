"""Which exported variant the job ships (training.publish._choose)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from training.publish import _choose


def variant(items_per_s: float, stsb: float = 83.6, drift: float = 0.0) -> dict[str, Any]:
    return {
        "items_per_s": items_per_s,
        "quality": {"stsb_dev_spearman": stsb, "agreement_spearman": 0.80},
        "batch_independence_max_abs_diff": drift,
    }


def test_pointwise_ships_when_within_a_tenth_of_the_fastest_else_the_fastest_does() -> None:
    # AVX2-like: int8-pointwise 5% slower than fp32 -> still int8-pointwise (same bundle on both kinds).
    assert _choose({"fp32": variant(10_000), "int8-pointwise": variant(9_500)}) == "int8-pointwise"
    # Much slower -> the fastest.
    assert _choose({"fp32": variant(10_000), "int8-pointwise": variant(8_000)}) == "fp32"
    # Outside the quality bound (STS-B drop > 0.5 points) or batch-dependent -> never shipped.
    assert _choose({"fp32": variant(10_000), "int8-pointwise": variant(20_000, stsb=83.0)}) == "fp32"
    assert _choose({"fp32": variant(10_000), "int8-dynamic": variant(20_000, drift=1e-3)}) == "fp32"
    assert _choose({"fp32": variant(10_000), "int8-dynamic": variant(12_000)}) == "int8-dynamic"
