"""What each training script trains: a backbone and a loss head with SGD, or an SCF confidence head with
Adam on a frozen model; and the weights a new run starts from."""
import os
from collections import namedtuple

import jittor as jt

from backbone import build_backbone_from_config
from backbone.layers import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE
from data.text import DataError
from head import build_head
from head.scf import ConfidenceHead
from model.checkpoint import OFFICIAL_JITTOR_INPUT_NORM
from model.loading import model_config
from model.weight_files import read_weights
from util import distributed

from .amp import LossScale
from .optim import SGD, Adam

# What a run trains: `optimizer.modules` are the parts it updates; checkpoints hold backbone and head.
TrainingModel = namedtuple("TrainingModel", "backbone head optimizer")


# Bytes each class-centre value takes while training: its float32 weight, gradient and momentum.
CENTRE_VALUE_BYTES = 3 * 4


def check_head_fits(cfg, dataset):
    """Class centres that cannot fit in this machine's memory (a stray label of 10**9, a `property` of 10**12
    classes) are a DataError naming the list, before allocating them ends the process."""
    classes = dataset.num_classes
    if cfg["shard_head"]:
        classes = -(-classes // distributed.world_size())
    need = classes * cfg["embedding_size"] * CENTRE_VALUE_BYTES
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory:
        raise DataError(f"{dataset.source}: {dataset.num_classes} classes (the largest label + 1, or the count in "
                        f"property): training their {cfg['embedding_size']}-d centres needs {need / 2**30:.0f} GiB"
                        f"{' per rank' if cfg['shard_head'] else ''}, more than this machine's "
                        f"{memory / 2**30:.0f} GiB of memory")


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
            if part == "backbone" and source is None:
                input_norm = OFFICIAL_JITTOR_INPUT_NORM
            elif part == "backbone":  # a checkpoint of ours: the normalisation its config states
                input_norm = model_config(cfg["resume_backbone"], source).get("input_norm", input_norm)
    return weights, input_norm
