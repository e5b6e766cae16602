"""Models: what each training script trains, and the one way to build a model from any checkpoint."""
from collections import namedtuple

import jittor as jt

from backbone import build_backbone_from_config
from backbone.common import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE
from head import build_head
from head.scf import ConfidenceHead, feature_channels

from .checkpoint import (OFFICIAL_JITTOR_INPUT_NORM, CheckpointError, is_scf, load_checkpoint, load_weights,
                         model_config, read_weights)
from .amp import LossScale
from .optim import SGD, Adam

# What a run trains: `optimizer.modules` are the parts it updates; checkpoints hold backbone and head.
TrainingModel = namedtuple("TrainingModel", "backbone head optimizer")
# A checkpoint's model in eval mode: its SCF confidence head is None unless it is an SCF checkpoint;
# head_arrays are the stored head's weights (a trained head's class centres, or the confidence head).
LoadedModel = namedtuple("LoadedModel", "backbone confidence_head config head_arrays")


def build_model(cfg, num_classes):
    """Backbone, loss head and SGD of a training config (train_SFace_jittor.py, the benchmark)."""
    jt.set_seed(cfg["seed"])
    backbone = build_backbone_from_config(cfg)
    if cfg["local_bn"]:
        for module in backbone.modules():
            if isinstance(module, jt.nn.BatchNorm):
                module.sync = False
    head = build_head(cfg["head"], cfg["embedding_size"], num_classes, seed=cfg["seed"],
                      shard=cfg["shard_head"], **cfg["head_params"])
    optimizer = SGD({"backbone": backbone, "head": head}, cfg["lr"], cfg["momentum"], cfg["weight_decay"],
                    local=[f"head/{n}" for n in head.state_dict()] if head.sharded else (),
                    loss_scale=LossScale() if cfg["amp"] else None)
    return TrainingModel(backbone, head, optimizer)


def build_scf_model(cfg, frozen):
    """A new confidence head (and its Adam) on a frozen model (`load_model` of the source checkpoint)."""
    jt.set_seed(cfg["seed"])
    head = ConfidenceHead(frozen.backbone.feature_channels, cfg["embedding_size"])
    return TrainingModel(frozen.backbone, head, Adam({"head": head}, cfg["lr"], weight_decay=cfg["weight_decay"]))


def start_weights(cfg):
    """--resume_backbone / --resume_head of a new run -> ({part: arrays}, the input normalisation to build with).

    A backbone keeps the normalisation it was trained with (an official .pkl: the official code's).
    """
    weights, input_norm = {}, [DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE]
    for part in ("backbone", "head"):
        if cfg[f"resume_{part}"]:
            weights[part], source = read_weights(cfg[f"resume_{part}"], part)
            if part == "backbone":
                input_norm = source["input_norm"] if source else OFFICIAL_JITTOR_INPUT_NORM
    return weights, input_norm


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
        raise CheckpointError(f"{path}: a .pkl does not say which backbone it holds")
    else:
        backbone_arrays, _ = read_weights(path, "backbone")
        config, head_arrays = dict(pkl_config, input_norm=OFFICIAL_JITTOR_INPUT_NORM), {}
    backbone = build_backbone_from_config(config)
    load_weights(backbone, backbone_arrays, path)
    backbone.eval()
    confidence_head = None
    if is_scf(config):
        confidence_head = ConfidenceHead(feature_channels(head_arrays), config["embedding_size"])
        load_weights(confidence_head, head_arrays, path)
        confidence_head.eval()
    return LoadedModel(backbone, confidence_head, config, head_arrays)


def load_backbone(path):
    """-> (backbone in eval mode with the checkpoint's weights, the run config it was trained with)."""
    model = load_model(path)
    return model.backbone, model.config
