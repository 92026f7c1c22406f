"""Adds a linear projection, or a linear classifier, to the end of a LiteRT model, without
TensorFlow.

The app's embedder is the feature extractor followed by the run's standardization and PCA:
``(features - mean) @ matrix``. Keras could export that model again, but only with TensorFlow,
which a cluster node does not have. A LiteRT model is a flatbuffer, and LiteRT ships its schema
(``ai_edge_litert.schema_py_generated``, with the ``flatbuffers`` package): this module unpacks
the model, appends a SUB and a FULLY_CONNECTED operator holding the two arrays, makes the
projection the model's output, and packs it again. The feature extractor's operators and
weights are left as they are, so the embedder computes the very features the pipeline stored.

The app's classifier is the embedder followed by the run's classifier: a FULLY_CONNECTED with
the classifier's weights and bias, then a SOFTMAX; its outputs are the class probabilities and,
second, the embedder's coordinates, so that one call answers both "which fruit" and "which
photos look like it".
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

# A LiteRT flatbuffer's file identifier.
_IDENTIFIER = b"TFL3"
# Operator codes above 127 only fit builtinCode; below, deprecatedBuiltinCode repeats them.
_DEPRECATED_CODE_LIMIT = 127


def _add_buffer(model: schema.ModelT, array: np.ndarray) -> int:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(array, dtype=np.float32).tobytes(), np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _add_tensor(graph: schema.SubGraphT, name: str, shape: list[int], buffer: int = 0) -> int:
    """A float32 tensor; a -1 in ``shape`` is the batch dimension, resized at run time. Buffer
    0 is the schema's empty buffer: a tensor computed by an operator."""
    tensor = schema.TensorT()
    tensor.name = name
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = buffer
    tensor.shape = np.array([max(size, 1) for size in shape], dtype=np.int32)
    if -1 in shape:
        tensor.shapeSignature = np.array(shape, dtype=np.int32)
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator_code(model: schema.ModelT, builtin: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == 1:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, _DEPRECATED_CODE_LIMIT)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_operator(
    model: schema.ModelT,
    graph: schema.SubGraphT,
    builtin: int,
    options: tuple[int, object],
    *,
    inputs: list[int],
    output: int,
) -> None:
    operator = schema.OperatorT()
    operator.opcodeIndex = _operator_code(model, builtin)
    operator.inputs = np.array(inputs, dtype=np.int32)
    operator.outputs = np.array([output], dtype=np.int32)
    operator.builtinOptionsType, operator.builtinOptions = options
    graph.operators.append(operator)


def _add_fully_connected(
    model: schema.ModelT, graph: schema.SubGraphT, *, inputs: list[int], output: int
) -> None:
    """``inputs``: the input, the weights (outputs, inputs), and the bias (-1: none)."""
    _add_operator(
        model,
        graph,
        schema.BuiltinOperator.FULLY_CONNECTED,
        (schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT()),
        inputs=inputs,
        output=output,
    )


def _unpacked(model_bytes: bytes) -> tuple[schema.ModelT, schema.SubGraphT, int, int]:
    """The model, its one subgraph, its one output tensor and that output's width."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_bytes, 0))
    if len(model.subgraphs) != 1 or len(model.subgraphs[0].outputs) != 1:
        raise ValueError("The model must have one subgraph with one output.")
    graph = model.subgraphs[0]
    output = int(graph.outputs[0])
    return model, graph, output, int(graph.tensors[output].shape[-1])


def _packed(model: schema.ModelT, size_hint: int) -> bytes:
    builder = flatbuffers.Builder(size_hint + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


def _set_outputs(model: schema.ModelT, graph: schema.SubGraphT, outputs: dict[str, int]) -> None:
    """Makes ``outputs`` (name -> tensor) the graph's outputs, in this order, and its
    signature's."""
    graph.outputs = np.array(list(outputs.values()), dtype=np.int32)
    for signature in model.signatureDefs or []:
        maps = []
        for name, tensor in outputs.items():
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = name, tensor
            maps.append(entry)
        signature.outputs = maps


def append_projection(model_bytes: bytes, mean: np.ndarray, matrix: np.ndarray) -> bytes:
    """The model of ``model_bytes`` (one subgraph, one float32 output (N, d)) followed by
    ``(output - mean) @ matrix``: ``mean`` (d,), ``matrix`` (d, k), computed in float32.

    Raises:
        ValueError: the model has not one (N, d) output, or the arrays do not match it.
    """
    model, graph, features, width = _unpacked(model_bytes)
    if mean.shape != (width,) or matrix.ndim != 2 or matrix.shape[0] != width:
        raise ValueError(
            f"The model's output has {width} values; the projection is {mean.shape} and "
            f"{matrix.shape}."
        )
    components = int(matrix.shape[1])
    mean_tensor = _add_tensor(graph, "projection/mean", [width], _add_buffer(model, mean))
    centered = _add_tensor(graph, "projection/centered", [-1, width])
    # FULLY_CONNECTED's weights are (outputs, inputs).
    weights = _add_tensor(
        graph, "projection/weights", [components, width], _add_buffer(model, matrix.T)
    )
    coordinates = _add_tensor(graph, "projection/coordinates", [-1, components])

    _add_operator(
        model,
        graph,
        schema.BuiltinOperator.SUB,
        (schema.BuiltinOptions.SubOptions, schema.SubOptionsT()),
        inputs=[features, mean_tensor],
        output=centered,
    )
    _add_fully_connected(model, graph, inputs=[centered, weights, -1], output=coordinates)
    _set_outputs(model, graph, {"coordinates": coordinates})
    return _packed(model, len(model_bytes) + matrix.nbytes + mean.nbytes)


def append_classifier(model_bytes: bytes, weights: np.ndarray, bias: np.ndarray) -> bytes:
    """The model of ``model_bytes`` (one float32 output (N, k), the coordinates) with a second
    head: ``softmax(coordinates @ weights.T + bias)``, ``weights`` (classes, k), ``bias``
    (classes,). Outputs, in this order: ``probabilities`` (N, classes), ``coordinates`` (N, k).

    Raises:
        ValueError: the model has not one (N, k) output, or the arrays do not match it.
    """
    model, graph, coordinates, width = _unpacked(model_bytes)
    classes = int(bias.shape[0]) if bias.ndim == 1 else -1
    if weights.shape != (classes, width):
        raise ValueError(
            f"The model's output has {width} values; the classifier is {weights.shape} and "
            f"{bias.shape}."
        )
    weights_tensor = _add_tensor(
        graph, "classifier/weights", [classes, width], _add_buffer(model, weights)
    )
    bias_tensor = _add_tensor(graph, "classifier/bias", [classes], _add_buffer(model, bias))
    logits = _add_tensor(graph, "classifier/logits", [-1, classes])
    probabilities = _add_tensor(graph, "classifier/probabilities", [-1, classes])
    _add_fully_connected(
        model, graph, inputs=[coordinates, weights_tensor, bias_tensor], output=logits
    )
    softmax = schema.SoftmaxOptionsT()
    softmax.beta = 1.0
    _add_operator(
        model,
        graph,
        schema.BuiltinOperator.SOFTMAX,
        (schema.BuiltinOptions.SoftmaxOptions, softmax),
        inputs=[logits],
        output=probabilities,
    )
    _set_outputs(model, graph, {"probabilities": probabilities, "coordinates": coordinates})
    return _packed(model, len(model_bytes) + weights.nbytes + bias.nbytes)
