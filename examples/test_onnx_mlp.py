"""Profile a small ONNX model on ONNX Runtime at a few batch sizes, recording each as a run.

The model is built here with the ``onnx`` helper API (no downloads). Run it with a store:

    pytest examples --neurolens-store=runs_store && neurolens ls
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FEATURES, HIDDEN, CLASSES = 256, 1024, 16


def build_mlp(seed: int = 0, hidden: int = HIDDEN) -> bytes:
    """A two-layer perceptron with a dynamic batch dimension, as serialized ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h_bias"]),
        helper.make_node("Relu", ["h_bias"], ["h_relu"]),
        helper.make_node("MatMul", ["h_relu", "w2"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            weight("w1", FEATURES, hidden),
            weight("b1", hidden),
            weight("w2", hidden, CLASSES),
            weight("b2", CLASSES),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every onnxruntime of the last two years
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # steadier numbers on a shared CI machine
    return ort.InferenceSession(build_mlp(), options, providers=["CPUExecutionProvider"])


@pytest.mark.neurolens(
    model=f"mlp-{FEATURES}x{HIDDEN}x{CLASSES}",
    backend="onnxrt",
    precision="fp32",
    tags={"example": "onnx-mlp", "provider": "CPUExecutionProvider"},
)
@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_mlp_latency(neurolens, session: ort.InferenceSession, batch_size: int) -> None:
    x = np.random.default_rng(batch_size).standard_normal((batch_size, FEATURES)).astype(np.float32)
    # timed until stable (at least --neurolens-min-time, at most --neurolens-max-time)
    result = neurolens.measure(session.run, None, {"input": x}, batch_size=batch_size)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (batch_size, CLASSES)
    assert 0 < result.min_ms <= result.p50_ms <= result.max_ms
    assert result.throughput is not None and result.throughput > 0
