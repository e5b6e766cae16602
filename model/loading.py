"""The one way to build a model from any checkpoint: `load_model(path)` -> its backbone (and SCF confidence
head) in eval mode, built from the config the checkpoint stores."""
from collections import namedtuple

from backbone import build_backbone_from_config, check_backbone_config
from head.scf import ConfidenceHead, feature_channels

from .checkpoint import MODEL_KEYS, OFFICIAL_JITTOR_INPUT_NORM, CheckpointError, is_scf, load_checkpoint, load_weights
from .weight_files import read_weights

# A checkpoint's model in eval mode: its SCF confidence head is None unless it is an SCF checkpoint;
# head_arrays are the stored head's weights (a trained head's class centres, or the confidence head).
LoadedModel = namedtuple("LoadedModel", "backbone confidence_head config head_arrays")


def model_config(path, config=None):
    """The backbone-describing keys of a checkpoint's config (read from `path` unless given)."""
    config = load_checkpoint(path)["meta"].get("config", {}) if config is None else config
    if not isinstance(config, dict) or "net" not in config:
        raise CheckpointError(f"{path}: holds no model config (net, input size, embedding size)")
    try:
        check_backbone_config(config)
    except ValueError as e:
        raise CheckpointError(f"{path}: its config describes no backbone this project builds: {e}") from None
    return {k: config[k] for k in MODEL_KEYS if k in config}


def load_model(path, pkl_config=None):
    """Any checkpoint -> its model in eval mode (a `LoadedModel`), built from the config it stores.

    `path`: a .npz of this project (training, SCF, tools/import_weights.py) or an official SFace-Jittor
    Backbone_*.pkl, which stores no config: `pkl_config` (net, input_hw, embedding_size) then says what it holds.
    """
    if path.endswith(".npz"):
        checkpoint = load_checkpoint(path)
        config, head_arrays = checkpoint["meta"].get("config", {}), checkpoint["head"]
        model_config(path, config)  # it must describe its backbone
        backbone_arrays = checkpoint["backbone"]
    elif pkl_config is None:
        raise CheckpointError(f"{path}: not a .npz checkpoint of this project"
                              + (" (an official .pkl does not say which backbone it holds)" if path.endswith(".pkl")
                                 else ""))
    else:
        backbone_arrays, _ = read_weights(path, "backbone")
        config, head_arrays = dict(pkl_config, input_norm=OFFICIAL_JITTOR_INPUT_NORM), {}
    backbone = build_backbone_from_config(config)
    load_weights(backbone, backbone_arrays, path)
    backbone.eval()
    confidence_head = None
    if is_scf(config):
        confidence_head = stored_confidence_head(path, head_arrays, config["embedding_size"])
    return LoadedModel(backbone, confidence_head, config, head_arrays)


def stored_confidence_head(path, head_arrays, embedding_size):
    """The SCF confidence head an SCF checkpoint stores, in eval mode; its width read from its first conv."""
    first_conv = head_arrays.get("convs.0.weight")
    if first_conv is None or first_conv.ndim != 4:
        raise CheckpointError(f"{path}: its config says SCF, but it holds no confidence head (no 4-d "
                              "'head/convs.0.weight')")
    confidence_head = ConfidenceHead(feature_channels(head_arrays), embedding_size)
    load_weights(confidence_head, head_arrays, path)
    confidence_head.eval()
    return confidence_head
