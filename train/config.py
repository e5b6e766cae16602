"""Command lines -> run configs, for both training scripts, with the presets as plain data.

Each script's options are a table (`SFACE`, `SCF`). An option left unset takes its value from
the `--data_mode` preset, then from the table. `resolve` validates the values and derives every
key the code reads (targets, input_hw, stage_epochs, the device, the input normalisation of the
starting weights, ...); the result is read-only (`FrozenConfig`): nothing downstream adds to it or
changes it. A resumed run takes the checkpoint's options, the ones it may change from its own
command line, and resolves again: no derived key can go stale. The config is what the run logs,
writes to `config.json` and stores in checkpoints.
"""
import argparse
import os
from collections import namedtuple

from backbone import check_backbone
from data.images import parse_size
from data.text import DataError
from head import HEADS, head_params
from model.checkpoint import CheckpointError
from model.loading import model_config
from util.distributed import WORKERS_ID_HELP, parse_workers, select_device, workers_id
from util.files import REPO_ROOT
from util.options import finite_float, parse_epoch_list, probability, random_seed

from .run_state import training_checkpoint
from .tensorboard_log import writer_installed
from .training_model import start_weights

FACE_TARGETS = "lfw,cfp_fp,agedb_30,calfw,cplfw"

Option = namedtuple("Option", "type default help")
FLAG = "flag"  # an option's type: on when given

# What both scripts mean the same by (docs/training.md: "as in training").
COMMON_OPTIONS = {
    "workers_id": Option(workers_id, "auto", WORKERS_ID_HELP),
    "data_mode": Option(str, "casia", "dataset preset: default data root and the recipe's values"),
    "data_root": Option(str, "", "folder holding imgs.txt (and property) or train.rec + train.idx; default from "
                                 "--data_mode"),
    "epochs": Option(int, 80, "training epochs"),
    "batch_size": Option(int, 256, "global batch size, split across MPI ranks"),
    "seed": Option(random_seed, 1337, "random seed (data order, flips, dropout, initial weights)"),
    "save_freq": Option(int, 1000, "write last.npz every N batches (also at each epoch end)"),
    "log_freq": Option(int, 20, "log averaged training figures every N batches"),
    "num_workers": Option(int, 4, "image-decoding threads per process"),
    "max_steps": Option(int, 0, "stop after this many batches in all (0: no limit)"),
    "strict_data": Option(FLAG, False, "stop at the first missing or undecodable training image instead of "
                                       "skipping it"),
    "tensorboard": Option(FLAG, False, "also write the run's figures as TensorBoard event files in "
                                       "<outdir>/tensorboard, with the tensorboardX package (off unless given, "
                                       "whether or not that is installed)"),
}

SFACE_OPTIONS = {
    **COMMON_OPTIONS,
    "stages": Option(str, "50,70,80", "comma-separated epochs at which the learning rate is divided by 10"),
    "lr": Option(float, 0.1, "initial learning rate"),
    "net": Option(str, "IR_50", "backbone: IR_18, IR_34, IR_50, IR_100 (= IR_101), IR_152, IR_SE_50, IR_SE_100, "
                                "MobileFaceNet, SphereFace4/20/36/64"),
    "head": Option(str, "SFaceLoss", f"loss head: {', '.join(HEADS)}"),
    "target": Option(str, FACE_TARGETS, "comma-separated verification targets (names under --eval_root, .bin files "
                                        "or pairs folders); 'none' disables evaluation"),
    "eval_root": Option(str, "", "folder holding the verification targets (default: the data root)"),
    "resume": Option(str, "", "checkpoint file (or an outdir holding last.npz) to continue exactly where it "
                              "stopped: weights, momentum, epoch, step, LR"),
    "resume_backbone": Option(str, "", "start from these backbone weights (a checkpoint of this project or an "
                                       "official SFace-Jittor .pkl)"),
    "resume_head": Option(str, "", "start from these head weights (same formats)"),
    "outdir": Option(str, "", "output folder (default: results/<net>-<head>-<data_mode>, or the resumed "
                              "checkpoint's)"),
    "param_s": Option(float, None, "scale s of SFace, CosFace, AMSoftmax, ArcFace (default: the head's: 64; "
                                   "AMSoftmax 30)"),
    "param_k": Option(float, None, "SFace sigmoid slope k (default: 80)"),
    "param_a": Option(float, None, "SFace intra-class sigmoid centre a in radians (default: the data mode's)"),
    "param_b": Option(float, None, "SFace inter-class sigmoid centre b in radians (default: the data mode's)"),
    "param_m": Option(float, None, "margin m of CosFace / AMSoftmax (0.35), ArcFace (0.5), SphereFace (4, an "
                                   "integer)"),
    "embedding_size": Option(int, 512, "embedding dimension"),
    "input_size": Option(str, "112x112", "network input HxW: 112x112, or 112x96 (SphereFace crop; 112x112 images "
                                         "are cut by 8 columns per side)"),
    "eval_freq": Option(int, 2000, "evaluate every N batches (0: only before and after training)"),
    "weight_decay": Option(float, 5e-4, "SGD weight decay (not applied to BatchNorm parameters)"),
    "momentum": Option(float, 0.9, "SGD momentum"),
    "shard_head": Option(FLAG, False, "under mpirun, split the SFace class centres (and their optimizer state) "
                                      "over the ranks instead of keeping a copy on each: for large identity counts"),
    "local_bn": Option(FLAG, False, "under mpirun, keep BatchNorm batch statistics per rank instead of "
                                    "synchronising them"),
    "label_noise": Option(float, 0.0, "fraction P of the training images given another class's label (closed-set "
                                      "noise drawn from --seed; exactly round(P N) images; listed in "
                                      "<outdir>/label_noise.txt)"),
    "label_noise_open": Option(float, 0.0, "fraction P of the training images replaced by images of people outside "
                                           "the training classes, each keeping the label it replaces (open-set noise "
                                           "from the data root's open_set.txt, as tools/data_tools.py lfw-protocol "
                                           "writes it; drawn from --seed; listed in <outdir>/label_noise_open.txt)"),
    "amp": Option(FLAG, False, "mixed precision on the GPU: the backbone in float16, the head and the weights in "
                               "float32, a dynamic loss scale (refused on the CPU)"),
}

SCF_OPTIONS = {
    **COMMON_OPTIONS,
    "checkpoint": Option(str, "", "trained checkpoint (.npz) holding the backbone and the head's class centres, "
                                  "both kept frozen"),
    "resume": Option(str, "", "an SCF checkpoint (or its outdir) to continue exactly"),
    "epochs": Option(int, 30, "training epochs"),
    "lr": Option(float, 3e-5, "Adam learning rate"),
    "weight_decay": Option(float, 5e-4, "Adam weight decay"),
    "step_size": Option(int, 2, "epochs between learning-rate decays (StepLR)"),
    "gamma": Option(float, 0.5, "StepLR decay factor"),
    "radius": Option(float, 64.0, "r of w_y = r W_y / |W_y| (the SCF paper's 64)"),
    "quality_augment": Option(probability, 0.0, "probability that a training image is blurred, downscaled or partly "
                                          "covered at a random strength, so the head also sees faces whose "
                                          "embeddings drift from their centre (default 0: the public recipe)"),
    "outdir": Option(str, "", "output folder (default: results/SCF-<net>-<data_mode>, or the resumed "
                              "checkpoint's)"),
}

# Data roots follow the official code's ./data/ layout; the demo is the embedded LFW subset
# (data/demo/README.md). Each script's preset of a mode adds its recipe's values.
DATA_ROOTS = {"casia": "data/faces_webface_112x112", "vgg": "data/faces_vgg_112x112", "ms1m": "data/faces_emore",
              "demo": "data/demo"}
# The demo is sized for a few minutes on 2 CPU cores, in both scripts.
DEMO_RUN = {"batch_size": 32, "save_freq": 200, "log_freq": 10, "num_workers": 2}
# Recommended SFace (a, b) per training set (TIP 2021): CASIA-WebFace 0.87/1.2, VGGFace2 0.88/1.25, MS1MV2 0.9/1.2.
SFACE_PRESETS = {
    "casia": {"param_a": 0.87, "param_b": 1.2},
    "vgg": {"param_a": 0.88, "param_b": 1.25},
    "ms1m": {"param_a": 0.9, "param_b": 1.2},
    "demo": {**DEMO_RUN, "param_a": 0.87, "param_b": 1.2, "net": "MobileFaceNet", "target": "lfw_demo", "epochs": 3,
             "stages": "2", "lr": 0.05, "eval_freq": 0},
}
# SCF's public recipe on every set; on the demo model a short run at a higher Adam rate (docs/training.md).
SCF_PRESETS = {"casia": {}, "vgg": {}, "ms1m": {},
               "demo": {**DEMO_RUN, "epochs": 4, "step_size": 1, "lr": 1e-3}}

# What a resumed run may change; everything else comes from the checkpoint's config, and giving it
# another value is refused. A new --data_root must hold the same data (checked when it is read).
COMMON_OVERRIDABLE = ("workers_id", "num_workers", "max_steps", "epochs", "save_freq", "log_freq", "strict_data",
                      "tensorboard", "outdir", "data_root")
# Options naming files: the same file however the path is spelt.
PATH_OPTIONS = ("checkpoint", "resume_backbone", "resume_head")

Spec = namedtuple("Spec", "script description options presets overridable scf")
SFACE = Spec("train_SFace_jittor.py", "Train a face-recognition backbone with a loss head (SFace by default). Run "
             "under `mpirun -np N` for data parallelism over N processes.", SFACE_OPTIONS, SFACE_PRESETS,
             COMMON_OVERRIDABLE + ("eval_freq", "target", "eval_root", "shard_head"), scf=False)
SCF = Spec("train_SCF_jittor.py", "Train Sphere Confidence Face (a per-image kappa) on a frozen model. Run under "
           "`mpirun -np N` for data parallelism over N processes.", SCF_OPTIONS, SCF_PRESETS,
           COMMON_OVERRIDABLE, scf=True)


def build_parser(spec):
    p = argparse.ArgumentParser(description=spec.description + " Options left unset take the --data_mode "
                                "preset's value, then the default shown.")
    for name, option in spec.options.items():
        # Every default is None, so the options the user gave are known (see configure).
        shown = f" (default: {option.default})" if option.default not in (None, "", False) else ""
        if option.type == FLAG:  # one a resumed run may change can be turned off too (--no-<name>)
            p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction if name in spec.overridable
                           else "store_true", default=None, help=option.help)
        else:
            p.add_argument(f"--{name}", type=finite_float if option.type is float else option.type, default=None,
                           help=option.help + shown,
                           choices=sorted(spec.presets) if name == "data_mode" else None)
    return p


def layered(spec, given):
    """The table's defaults, under the data mode's preset, under the options given."""
    mode = given.get("data_mode", spec.options["data_mode"].default)
    values = {name: option.default for name, option in spec.options.items()}
    values.update(spec.presets[mode], data_root=os.path.join(REPO_ROOT, DATA_ROOTS[mode]))
    values.update(given)
    return values


def check_ranges(cfg, positive, non_negative):
    for key in positive:
        if cfg[key] <= 0:
            raise ValueError(f"--{key} must be positive, got {cfg[key]}")
    for key in non_negative:
        if cfg[key] < 0:
            raise ValueError(f"--{key} must be >= 0, got {cfg[key]}")


class FrozenConfig(dict):
    """A resolved run config: a dict (JSON, checkpoints and logs take it as one) that refuses every change, its
    lists held as tuples and its dicts frozen too."""

    def __init__(self, values=()):
        super().__init__((k, frozen(v)) for k, v in dict(values).items())

    def refuse(self, *args, **kwargs):
        raise TypeError("the run config is read-only once resolved: train/config.py derives every key")

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = refuse

    def __reduce__(self):
        return FrozenConfig, (dict(self),)


def frozen(value):
    if isinstance(value, dict):
        return FrozenConfig(value)
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def resolve_sface(cfg):
    cfg["eval_root"] = cfg["eval_root"] or cfg["data_root"]
    cfg["outdir"] = cfg["outdir"] or os.path.join("results", f"{cfg['net']}-{cfg['head']}-{cfg['data_mode']}")
    cfg["targets"] = [] if cfg["target"].strip().lower() in ("", "none") else \
        [t.strip() for t in cfg["target"].split(",") if t.strip()]
    if not cfg["targets"] and cfg["target"].strip().lower() not in ("", "none"):
        raise ValueError(f"--target {cfg['target']!r} names no target; give 'none' to train without evaluation")
    cfg["input_hw"] = list(parse_size(cfg["input_size"]))
    check_backbone(cfg["net"], cfg["input_hw"])
    cfg["stage_epochs"] = parse_epoch_list(cfg["stages"], "--stages")
    check_ranges(cfg, ("epochs", "batch_size", "embedding_size", "log_freq", "num_workers", "lr"),
                 ("eval_freq", "save_freq", "max_steps", "momentum", "weight_decay"))
    for key in ("label_noise", "label_noise_open"):
        if not 0.0 <= cfg[key] < 1.0:
            raise ValueError(f"--{key} must be a fraction in [0, 1), got {cfg[key]}")
    given = {k[len("param_"):]: cfg[k] for k in cfg["given"] if k.startswith("param_")}
    checked = head_params(cfg["head"], given, cfg["shard_head"])  # the one check: head, its parameters, sharding
    # The head's own --param_<x>, given or from the preset (a preset's a and b mean nothing to ArcFace).
    values = {p: checked.get(p, cfg[f"param_{p}"]) for p in HEADS[cfg["head"]].params}
    cfg["head_params"] = {p: v for p, v in values.items() if v is not None}
    if cfg["amp"] and cfg["device"] == "cpu":
        raise ValueError("--amp is mixed precision for the GPU; this run is on the CPU, where float16 is slower "
                         "than float32: leave --amp out")
    return cfg


def resolve_scf(cfg):
    """Needs the frozen model's keys (net, input_hw, ...) already in `cfg`."""
    if not cfg["checkpoint"] and not cfg["resume"]:
        raise ValueError("give --checkpoint (the frozen model) or --resume")
    cfg["outdir"] = cfg["outdir"] or os.path.join("results", f"SCF-{cfg['net']}-{cfg['data_mode']}")
    cfg["targets"] = []  # SCF runs score no verification target while training
    check_ranges(cfg, ("epochs", "batch_size", "step_size", "log_freq", "num_workers", "lr", "radius", "gamma"),
                 ("save_freq", "max_steps", "weight_decay"))
    return cfg


def resolve(spec, values):
    """Option values (and the keys a run carries, e.g. input_norm) -> the validated, read-only config with every
    derived key. Turns CUDA on or off as --workers_id asks (a GPU asked for but absent is an error)."""
    cfg = dict(values, gpu_ids=parse_workers(values["workers_id"]), device=select_device(values["workers_id"]))
    if cfg["tensorboard"] and not writer_installed():
        raise ValueError("--tensorboard writes its event files with the tensorboardX package, which is not installed "
                         "here: pip install -r requirements.txt")
    return FrozenConfig(resolve_scf(cfg) if spec.scf else resolve_sface(cfg))


def same_value(name, given, stored):
    if name in PATH_OPTIONS and given and stored:
        return os.path.realpath(given) == os.path.realpath(stored)
    return given == stored


def refuse_unhonoured(spec, given, stored):
    """A resumed run is its checkpoint's run: an option it may not change, given another value, is an error."""
    unhonoured = [f"--{k} {given[k]} (the run's: {stored.get(k, spec.options[k].default)})" for k in sorted(given)
                  if k not in spec.overridable and k != "resume"
                  and not same_value(k, given[k], stored.get(k, spec.options[k].default))]
    if unhonoured:
        raise ValueError(f"a resumed run keeps its checkpoint's options, so it cannot take {', '.join(unhonoured)}; "
                         f"it may change only {', '.join('--' + k for k in spec.overridable)} (start a new run, with "
                         "another --outdir, for the rest)")


def reached_max_steps(cfg, progress):
    return bool(cfg["max_steps"]) and progress["step"] >= cfg["max_steps"]


def finished(cfg, progress):
    """Whether a run at `progress` has nothing left to do: its epochs or --max_steps done, and its last evaluation."""
    trained = progress["epoch"] >= cfg["epochs"] or reached_max_steps(cfg, progress)
    return trained and (not cfg["targets"] or progress.get("evaluated_step") == progress["step"])


class RunFinished(Exception):
    """A finished run given to --resume: nothing to do (the scripts exit with status 0, printing this)."""


def stop_if_finished(cfg, path, progress):
    """Raise RunFinished for a finished run, before anything is read or written."""
    if not finished(cfg, progress):
        return
    limit = f" of --max_steps {cfg['max_steps']}" if reached_max_steps(cfg, progress) else ""
    raise RunFinished(f"{path}: the run is finished ({progress['epoch']} of {cfg['epochs']} epochs done, step "
                      f"{progress['step']}{limit}); nothing was changed. Give a larger --epochs or --max_steps to "
                      "train on.")


def resumed_values(spec, given, path, checkpoint):
    """The checkpoint's config with the options a resumed run may change taken from its command line."""
    stored = checkpoint["meta"]["config"]
    refuse_unhonoured(spec, given, stored)
    values = {name: option.default for name, option in spec.options.items()}
    values.update(stored)
    values.update({k: v for k, v in given.items() if k in spec.overridable}, resume=path)
    values["given"] = sorted(set(stored.get("given", ())) | set(given))
    if "outdir" not in given:
        values["outdir"] = os.path.dirname(os.path.abspath(path))
    return values


# How a run starts: its resolved config, the checkpoint it resumes (or None), and for a new SFace-style run
# the weights it starts from ({part: arrays} of --resume_backbone / --resume_head).
Start = namedtuple("Start", "cfg checkpoint weights")


def configure(spec, argv=None):
    """Command line -> a `Start`; a bad option is a usage error, a bad file a CheckpointError or DataError."""
    parser = build_parser(spec)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        if given.get("resume"):
            path, checkpoint = training_checkpoint(given["resume"], spec.scf)
            cfg = resolve(spec, resumed_values(spec, given, path, checkpoint))
            stop_if_finished(cfg, path, checkpoint["meta"]["progress"])
            return Start(cfg, checkpoint, {})
        values, weights = dict(layered(spec, given), given=sorted(given)), {}
        if spec.scf and values["checkpoint"]:
            values.update(model_config(values["checkpoint"]), scf=True,  # the frozen model's
                          source_checkpoint=os.path.abspath(values["checkpoint"]))
        if not spec.scf:  # a backbone keeps the input normalisation it was trained with
            weights, values["input_norm"] = start_weights(values)
        return Start(resolve(spec, values), None, weights)
    except (CheckpointError, DataError):  # a bad file: the message names it
        raise
    except ValueError as e:
        parser.error(str(e))
