"""int8 variants of an exported CNN graph, measured by `publish` against fp32.

- `dynamic`: `quantize_dynamic` (weights int8, activations quantised at run time). It only helps MatMul;
  on this CNN's convolutions it is ~10x *slower* than fp32 here, kept as a measured row of the table.
- `pointwise`: static per-channel int8 (QDQ) on the dense 1x1 convolutions only (the pointwise convs and
  a stem, where nearly all the MACs are), calibrated on real training texts. Depthwise convs stay fp32:
  docs/performance.md: int8 depthwise convs at 0.55-0.7x of fp32. Every 1x1 conv works on one position at
  a time, so a text's embedding still does not depend on its batch-mates' padding.

Calibration is MinMax over fixed batches, so quantising `model.onnx` and `explain.onnx` with the same
batches gives both graphs the same scales: Explain's similarity then matches the served embeddings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

Batch = tuple[np.ndarray, np.ndarray]


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> Path:
    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8)
    return out_path


def dense_1x1_convs(model_path: Path) -> list[str]:
    """Names of the Conv nodes with a [C_out, C_in, 1, 1] weight and group 1."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1], [])
        if group == 1 and len(shape) == 4 and shape[2:] == [1, 1]:
            names.append(node.name)
    return names


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    """Fixed (input_ids, attention_mask) batches, read once."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self._it: Iterator[Batch] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        return {"input_ids": batch[0], "attention_mask": batch[1]}


def quantize_pointwise_int8(fp32_path: Path, out_path: Path, calibration: Sequence[Batch]) -> Path:
    """Static per-channel int8 on the dense 1x1 convs of `fp32_path` (see the module docstring)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("pointwise int8 needs calibration batches")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        nodes = dense_1x1_convs(pre)
        if not nodes:
            raise ValueError(f"{fp32_path}: no dense 1x1 convolutions to quantise")
        quantize_static(
            str(pre),
            str(out_path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            nodes_to_quantize=nodes,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path
