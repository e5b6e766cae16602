"""ONNX export of a backbone, for OpenCV (`cv2.FaceRecognizerSF`, `cv2.dnn`) and onnxruntime.

The graph is traced from the module tree in eval mode. Every layer with an ONNX form (the
table `LAYERS`: Conv incl. grouped and depthwise, BatchNorm in inference form, PReLU, Linear,
...) becomes nodes; every other module runs its own `execute` on a symbolic tensor (`Value`),
so residual sums, SE gates and the input normalisation (Sub, Mul) are taken from the code
Jittor runs, not restated here. Dropout (identity in eval mode) emits nothing. A layer or an
operation the exporter does not know is refused by name.

Shapes are constant: no Shape arithmetic, which older OpenCV 4.x cannot read. The batch is 1
(what FaceRecognizerSF feeds), any fixed N, or "dynamic" (a named dimension; Flatten keeps it).
Input: N x 3 x H x W float32 RGB 0..255, what `FaceRecognizerSF.feature` feeds (blobFromImage
with swapRB); output: the raw embedding N x D, not normalised.
"""
from functools import partial

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from jittor import nn
from onnx import TensorProto, helper, numpy_helper

from backbone.ir import Subsample
from backbone.layers import Flatten, InputNorm
from util.errors import InputError

DEFAULT_OPSET = 13  # read by OpenCV 4.x and onnxruntime alike (checked: OpenCV 4.11, onnxruntime 1.20)
# Gemm's bias is optional from opset 11; the nodes written here mean the same up to the newest opset.
MIN_OPSET = 11
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
DYNAMIC_BATCH = "batch"
# Layers whose own execute is only +, -, * on its input: traced as they are.
ARITHMETIC_LAYERS = (InputNorm,)


class ExportError(InputError):
    """A model the exporter cannot write as ONNX, or an unreadable .onnx; the message names the file or layer."""


class Graph:
    """The nodes and constants traced so far."""

    def __init__(self):
        self.nodes, self.initializers, self.count = [], [], 0

    def fresh(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, array, hint="const"):
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op, inputs, ndim, **attributes):
        output = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return Value(self, output, ndim)


def binary(op):
    def apply(self, other):
        return self.graph.node(op, [self.name, self.operand(other)], self.ndim)
    return apply


class Value:
    """A symbolic N-d tensor of the graph: arithmetic on it adds ONNX nodes."""

    def __init__(self, graph, name, ndim):
        self.graph, self.name, self.ndim = graph, name, ndim

    def operand(self, other):
        if isinstance(other, Value):
            return other.name
        if isinstance(other, (int, float)):
            return self.graph.constant(np.float32(other))
        raise ExportError(f"arithmetic with a {type(other).__name__} has no ONNX form in this exporter")

    __add__ = __radd__ = binary("Add")
    __mul__ = __rmul__ = binary("Mul")
    __sub__ = binary("Sub")

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise ExportError(f"the tensor operation '{attribute}' has no ONNX form in this exporter")


def numpy_of(value, size):
    """A layer's parameter as a float32 vector of `size` (Jittor keeps a plain 1.0 / 0.0 when not affine)."""
    return np.broadcast_to(np.asarray(value.numpy() if hasattr(value, "numpy") else value, np.float32), (size,))


def expect_ndim(layer, x, ndim):
    if x.ndim != ndim:
        raise ExportError(f"{type(layer).__name__} on a {x.ndim}-d tensor (this exporter writes it for {ndim}-d)")


def conv(graph, layer, x):
    expect_ndim(layer, x, 4)
    inputs = [x.name, graph.constant(layer.weight.numpy(), "weight")]
    if layer.bias is not None:
        inputs.append(graph.constant(layer.bias.numpy(), "bias"))
    pad_h, pad_w = layer.padding
    # OpenCV needs kernel_shape spelled out, although ONNX could infer it from the weight.
    return graph.node("Conv", inputs, 4, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=[pad_h, pad_w, pad_h, pad_w], dilations=list(layer.dilation), group=layer.groups)


def batch_norm(graph, layer, x):
    size = layer.num_features
    inputs = [x.name] + [graph.constant(numpy_of(getattr(layer, name), size), name)
                         for name in ("weight", "bias", "running_mean", "running_var")]
    return graph.node("BatchNormalization", inputs, x.ndim, epsilon=float(layer.eps))


def prelu(graph, layer, x):
    slope = layer.weight.numpy()
    # one slope per channel (axis 1) broadcasts over N x C x H x W as C x 1 x 1
    shape = (-1,) + (1,) * (x.ndim - 2) if slope.size > 1 else (1,)
    return graph.node("PRelu", [x.name, graph.constant(slope.reshape(shape), "slope")], x.ndim)


def linear(graph, layer, x):
    expect_ndim(layer, x, 2)
    inputs = [x.name, graph.constant(layer.weight.numpy(), "weight")]
    if layer.bias is not None:
        inputs.append(graph.constant(layer.bias.numpy(), "bias"))
    return graph.node("Gemm", inputs, 2, transB=1)


def subsample(graph, layer, x):
    """MaxPool(kernel 1, stride s) keeps every s-th pixel, as the reference's shortcut does."""
    if layer.stride == 1:
        return x
    return graph.node("MaxPool", [x.name], 4, kernel_shape=[1, 1], strides=[layer.stride] * 2)


def global_pool(graph, layer, x):
    if layer.output_size not in (1, (1, 1), [1, 1]):
        raise ExportError(f"AdaptiveAvgPool2d to {layer.output_size} (only a global pool is exported)")
    return graph.node("GlobalAveragePool", [x.name], 4)


def flatten(graph, layer, x):
    """N x ... -> N x rest: keeps a dynamic N without Shape ops."""
    return graph.node("Flatten", [x.name], 2, axis=1)


def elementwise(op):
    return lambda graph, layer, x: graph.node(op, [x.name], x.ndim)


LAYERS = {
    nn.Conv2d: conv,
    nn.BatchNorm: batch_norm,
    nn.PReLU: prelu,
    nn.Linear: linear,
    nn.ReLU: elementwise("Relu"),
    nn.Sigmoid: elementwise("Sigmoid"),
    nn.AdaptiveAvgPool2d: global_pool,
    nn.Dropout: lambda graph, layer, x: x,  # identity in eval mode
    Flatten: flatten,
    Subsample: subsample,
}


def leaf_layers(backbone):
    """(name, module) of each module without sub-modules."""
    named = backbone.named_modules()
    parents = {name.rpartition(".")[0] for name, _ in named if name}
    return [(name, m) for name, m in named if name not in parents]


def onnx_form(layer):
    """The LAYERS writer of a layer's class or of the nearest class it derives from (backbone.cpu_layers'
    BatchNorm is an nn.BatchNorm), else None."""
    return next((LAYERS[c] for c in type(layer).__mro__ if c in LAYERS), None)


def trace(backbone, graph, x, source):
    """Run the backbone on the symbolic input with each known layer writing its nodes instead."""
    for name, layer in leaf_layers(backbone):
        if onnx_form(layer) is None and not isinstance(layer, ARITHMETIC_LAYERS):
            raise ExportError(f"{source}: layer '{name}' ({type(layer).__name__}) has no ONNX form in this exporter")
    known = [m for m in backbone.modules() if onnx_form(m) is not None]
    for layer in known:  # an instance attribute overrides the class's execute for this trace only
        layer.execute = partial(onnx_form(layer), graph, layer)
    try:
        return backbone(x)
    except ExportError as e:
        raise ExportError(f"{source}: {e}") from None
    except (TypeError, RuntimeError) as e:  # a Jittor function was given the symbolic tensor
        raise ExportError(f"{source}: the backbone calls a Jittor function this exporter cannot follow "
                          f"({type(e).__name__}; see the chained traceback)") from e
    finally:
        for layer in known:
            del layer.execute


def check_opset(opset):
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} is not supported: choose {MIN_OPSET} to {newest}")


def backbone_onnx(backbone, input_hw, batch=1, opset=DEFAULT_OPSET, source="backbone", metadata=None):
    """The backbone (put in eval mode) as a checked ONNX model: N x 3 x H x W RGB 0..255 -> N x D.

    batch: a positive int or "dynamic"; metadata: {key: text} stored in the model's properties.
    """
    check_opset(opset)
    backbone.eval()
    graph = Graph()
    output = trace(backbone, graph, Value(graph, INPUT_NAME, 4), source)
    if not isinstance(output, Value) or output.ndim != 2:
        raise ExportError(f"{source}: the backbone's output is not an N x D embedding")
    for node in graph.nodes:  # the node giving the embedding names it
        node.output[:] = [OUTPUT_NAME if name == output.name else name for name in node.output]
    batch_dim = DYNAMIC_BATCH if batch == "dynamic" else int(batch)
    model = helper.make_model_gen_version(
        helper.make_graph(graph.nodes, "sface_jittor_backbone",
                          [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch_dim, 3, *input_hw])],
                          [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None)],
                          graph.initializers),
        producer_name="SFace-Jittor", opset_imports=[helper.make_opsetid("", opset)])
    helper.set_model_props(model, metadata or {})
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # also types the output N x D
    onnx.checker.check_model(model)
    return model


def onnx_input_size(path):
    """(H, W) of the faces an exported model takes; ExportError naming the file unless it takes N x C x H x W."""
    try:
        graph = onnx.load(path).graph
    except (OSError, DecodeError) as e:
        raise ExportError(f"{path}: not a readable ONNX model ({e})") from None
    if not graph.input:  # what an empty file parses to
        raise ExportError(f"{path}: an ONNX model without inputs (an empty file?); export one with "
                          f"tools/export_onnx.py")
    first = graph.input[0]
    dims = first.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ExportError(f"{path}: input '{first.name}' has {len(dims)} dimensions, not N x 3 x H x W images")
    size = tuple(d.dim_value for d in dims[2:])
    if min(size) <= 0:
        raise ExportError(f"{path}: input '{first.name}' has no fixed height and width")
    return size
