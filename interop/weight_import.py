"""Public pretrained face models -> this project's backbones, exactly.

Each importer maps a foreign parameter set onto a project backbone's state-dict names and
absorbs the architectural differences exactly rather than approximately:
- BatchNorm eps: a layer trained with eps_s runs here with eps_t; inference only sees
  running_var + eps, so running_var + eps_s - eps_t keeps every output unchanged;
- MXNet's fix_gamma=True means gamma is 1 whatever the file holds;
- a 1x1 convolution without bias on a 1x1 map is a Linear layer with a zero bias;
- the input normalisation the model was trained with travels in the checkpoint config.
"""
import json

import numpy as np
from jittor import nn

MXNET_BN_EPS = 1e-3  # MXNet's BatchNorm default
TORCH_BN_EPS = 1e-5  # PyTorch's BatchNorm default
SFACE_TORCH_INPUT_SCALE = 0.078125  # official SFace code: (x - 127.5) * 0.078125


def batchnorm_eps(model):
    """{module path: eps} of every BatchNorm in a project model."""
    return {name: m.eps for name, m in model.named_modules() if isinstance(m, nn.BatchNorm)}


def set_batchnorm(arrays, path, gamma, beta, mean, var, source_eps, target_eps):
    arrays[f"{path}.weight"] = np.asarray(gamma, np.float32)
    arrays[f"{path}.bias"] = np.asarray(beta, np.float32)
    arrays[f"{path}.running_mean"] = np.asarray(mean, np.float32)
    arrays[f"{path}.running_var"] = (np.asarray(var, np.float64) + source_eps - target_eps).astype(np.float32)


# ---- InsightFace MXNet MobileFaceNet (fmobilefacenet), from its parameters + symbol graph ----

def mxnet_nodes(symbol):
    """{op node name: (op, attributes, parameter input names)} of an MXNet symbol JSON."""
    nodes = symbol["nodes"]
    ops = {}
    for node in nodes:
        if node["op"] == "null":
            continue
        inputs = [nodes[i[0]] for i in node["inputs"]]
        params = [n["name"] for n in inputs if n["op"] == "null" and n["name"] != "data"]
        ops[node["name"]] = (node["op"], node.get("attrs", node.get("attr", {})) or {}, params)
    return ops


def mxnet_input_norm(ops):
    """(mean, scale) from the graph's leading _minus_scalar / _mul_scalar nodes."""
    mean = next((float(a["scalar"]) for op, a, _ in ops.values() if op == "_minus_scalar"), None)
    scale = next((float(a["scalar"]) for op, a, _ in ops.values() if op == "_mul_scalar"), None)
    if mean is None or scale is None:
        raise ValueError("the MXNet graph has no _minus_scalar and _mul_scalar input normalisation")
    return mean, scale


def from_insightface_mxnet(params, symbol_json, model):
    """params: {'arg:<name>' / 'aux:<name>': array} (the .params file as numpy); symbol_json: its graph."""
    ops = mxnet_nodes(json.loads(symbol_json) if isinstance(symbol_json, str) else symbol_json)
    value = {k.split(":", 1)[1]: v for k, v in params.items()}
    targets = batchnorm_eps(model)
    arrays = {}
    for path, module in model.named_modules():
        node = path.replace(".model.", ".").replace(".", "_")  # res_3.model.block0.conv_sep -> res_3_block0_conv_sep
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm, nn.PReLU)) and node not in ops:
            raise ValueError(f"the MXNet graph has no node '{node}' for {path}")
        if isinstance(module, nn.Conv2d):
            arrays[f"{path}.weight"] = value[ops[node][2][0]]
        elif isinstance(module, nn.Linear):
            weight, bias = ops[node][2]
            arrays[f"{path}.weight"], arrays[f"{path}.bias"] = value[weight], value[bias]
        elif isinstance(module, nn.PReLU):
            arrays[f"{path}.weight"] = value[ops[node][2][0]]
        elif isinstance(module, nn.BatchNorm):
            _, attrs, (gamma, beta, mean, var) = ops[node]
            gamma_value = np.ones_like(value[gamma]) if attrs.get("fix_gamma", "False") == "True" else value[gamma]
            eps = float(attrs.get("eps", MXNET_BN_EPS))
            set_batchnorm(arrays, path, gamma_value, value[beta], value[mean], value[var], eps, targets[path])
    return arrays, mxnet_input_norm(ops)


# ---- Xiaoccer's PyTorch MobileFaceNet (MobileFaceNet_Pytorch), 112x96 ----

# Its 15 bottlenecks in order, as this project's DepthWise modules.
XIAOCCER_BLOCKS = (["dconv_23"] + [f"res_3.model.block{i}" for i in range(4)] + ["dconv_34"]
                   + [f"res_4.model.block{i}" for i in range(6)] + ["dconv_45"]
                   + [f"res_5.model.block{i}" for i in range(2)])
# conv-BN-PReLU triples: theirs (conv, bn, prelu) -> our ConvBlock / LinearBlock paths.
XIAOCCER_LAYERS = [("conv1.conv", "conv1.bn", "conv1.prelu", "conv_1"),
                   ("dw_conv1.conv", "dw_conv1.bn", "dw_conv1.prelu", "conv_2_dw"),
                   ("conv2.conv", "conv2.bn", "conv2.prelu", "conv_6sep"),
                   ("linear7.conv", "linear7.bn", None, "conv_6dw7_7")]
for i, ours in enumerate(XIAOCCER_BLOCKS):
    XIAOCCER_LAYERS += [(f"blocks.{i}.conv.0", f"blocks.{i}.conv.1", f"blocks.{i}.conv.2", f"{ours}.conv_sep"),
                        (f"blocks.{i}.conv.3", f"blocks.{i}.conv.4", f"blocks.{i}.conv.5", f"{ours}.conv_dw"),
                        (f"blocks.{i}.conv.6", f"blocks.{i}.conv.7", None, f"{ours}.conv_proj")]


def from_xiaoccer_pytorch(state_dict, model):
    """Their `net_state_dict` (numpy arrays) -> MobileFaceNet(input 112x96, embedding 128) arrays."""
    sd = state_dict
    targets = batchnorm_eps(model)
    arrays = {}

    def bn(theirs, ours):
        set_batchnorm(arrays, ours, sd[f"{theirs}.weight"], sd[f"{theirs}.bias"], sd[f"{theirs}.running_mean"],
                      sd[f"{theirs}.running_var"], TORCH_BN_EPS, targets[ours])
    for conv, norm, prelu, ours in XIAOCCER_LAYERS:
        arrays[f"{ours}.conv2d.weight"] = sd[f"{conv}.weight"]
        bn(norm, f"{ours}.batchnorm")
        if prelu:
            arrays[f"{ours}.relu.weight"] = sd[f"{prelu}.weight"]
    weight = sd["linear1.conv.weight"]  # embedding x 512 x 1 x 1, no bias
    arrays["pre_fc1.weight"] = weight.reshape(weight.shape[0], -1)
    arrays["pre_fc1.bias"] = np.zeros(weight.shape[0], np.float32)
    bn("linear1.bn", "fc1")
    return arrays
