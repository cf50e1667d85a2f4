"""Weight-only INT8 / INT4 quantisation of the exported LM graphs as standard ONNX Q/DQ.

Every rank-2 weight of the language model -- the decoder layers' projections and `lm_head`
(MatMul B inputs, [in, out]) and the token-embedding table (the Gather data, [vocab,
hidden]) -- is replaced by a `DequantizeLinear` (opset 21) of block-wise symmetric
round-to-nearest integers: blocks of `block_size` along the input-channel axis of a MatMul
weight (axis 0, as TensorRT's weight-only INT4/INT8 MatMul expects) and along the hidden
axis of the embedding rows, one scale per block in the graph's float type, no zero point.
Activations, the KV cache and the vision graph stay in the export precision.

This is what TensorRT 10.x consumes in a strongly typed network (DQ -> MatMul, block-wise
int4/int8 weights) and what ONNX Runtime's CPU provider runs as is. ONNX Runtime's own
MatMulNBits (com.microsoft) is not parsed by TensorRT; NVIDIA ModelOpt's ONNX int4 path
(AWQ) writes the same Q/DQ pattern but needs calibration data and a CUDA/TensorRT
calibration runtime, so it is a drop-in for the graphs this module writes, not a
requirement (docs/engines.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# int4 needs finer blocks than int8 to keep the answers (docs/engines.md); the memory plan counts the same
from molmo2_ros.backends.memory_plan import DEFAULT_BLOCK_SIZE

QUANTIZE_OPSET = 21           # DequantizeLinear with block_size and int4 weights
SCHEMES = {"int8": 127, "int4": 7}   # symmetric: int8 -127..127, int4 -7..7


def quantize_weight(weight: np.ndarray, scheme: str, block_size: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise symmetric round-to-nearest along `axis` of a 2-D float weight:
    (integers as int8 values, scales [same shape with `axis` divided by block_size])."""
    qmax = SCHEMES[scheme]
    moved = np.moveaxis(weight.astype(np.float32), axis, 0)        # [K, N], blocks along K
    k, n = moved.shape
    blocks = moved.reshape(k // block_size, block_size, n)
    scale = np.abs(blocks).max(axis=1) / qmax                      # [K / block, N]
    scale = np.where(scale == 0, 1.0, scale).astype(weight.dtype)
    q = np.clip(np.rint(blocks / scale.astype(np.float32)[:, None, :]), -qmax, qmax).astype(np.int8)
    return np.moveaxis(q.reshape(k, n), 0, axis), np.moveaxis(scale, 0, axis)


def _integer_tensor(name: str, q: np.ndarray, scheme: str):
    import ml_dtypes
    from onnx import numpy_helper

    # int4 initialisers must come from ml_dtypes.int4 arrays (a Python int list does not round-trip)
    return numpy_helper.from_array(q.astype(ml_dtypes.int4) if scheme == "int4" else q, name)


def _targets(graph, initializers: dict) -> dict[str, int]:
    """{initializer name: block axis} for the weights to quantize."""
    from onnx import TensorProto

    def is_weight(name):
        tensor = initializers.get(name)
        return (tensor is not None and len(tensor.dims) == 2 and min(tensor.dims) >= 8
                and tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16))

    targets = {}
    for node in graph.node:
        if node.op_type == "MatMul" and is_weight(node.input[1]):
            targets[node.input[1]] = 0
        elif node.op_type == "Gather" and is_weight(node.input[0]):
            targets[node.input[0]] = 1
    return targets


def quantize_graph(path: Path, scheme: str, block_size: int | None = None) -> dict:
    """Rewrite the ONNX graph at `path` in place with quantized weights; return what was done
    (weights quantized and left as they were, bytes of weights before and after)."""
    import onnx
    from onnx import helper, numpy_helper, version_converter

    from molmo2_ros.engines.export import save_with_external_data

    if scheme not in SCHEMES:
        raise ValueError(f"quantization must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    block_size = block_size or DEFAULT_BLOCK_SIZE[scheme]
    model = onnx.load(str(path))
    model = version_converter.convert_version(model, QUANTIZE_OPSET)
    graph = model.graph
    del graph.value_info[:]   # shape annotations the converter infers; not part of the exported graph
    initializers = {t.name: t for t in graph.initializer}
    targets = _targets(graph, initializers)
    dq_nodes, kept, before, after = [], [], 0, 0
    for name, axis in targets.items():
        weight = numpy_helper.to_array(initializers[name])
        block = min(block_size, weight.shape[axis])
        if weight.shape[axis] % block:
            kept.append(name)
            continue
        q, scale = quantize_weight(weight, scheme, block, axis)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([_integer_tensor(name + "_quantized", q, scheme),
                                  numpy_helper.from_array(scale, name + "_scale")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_quantized", name + "_scale"], [name],
                                         name=name + "_dequantize", axis=axis, block_size=block))
        before += weight.nbytes
        after += q.size * (4 if scheme == "int4" else 8) // 8 + scale.nbytes
    nodes = dq_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    save_with_external_data(model, path)
    return {"scheme": scheme, "block_size": block_size, "weights_quantized": len(dq_nodes),
            "weights_kept": len(kept), "weight_bytes_before": before, "weight_bytes_after": after}


