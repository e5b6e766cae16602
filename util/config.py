"""Command line -> run config (a plain dict), with the data-mode presets as plain data.

An option left unset takes its value from the `--data_mode` preset, then from DEFAULTS.
The resolved dict is what the run logs, writes to `config.json` and stores in checkpoints.
"""
import argparse
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACE_TARGETS = "lfw,cfp_fp,agedb_30,calfw,cplfw"

DEFAULTS = {
    "workers_id": "auto",
    "epochs": 80,
    "stages": "50,70,80",
    "lr": 0.1,
    "batch_size": 256,
    "net": "IR_50",
    "head": "SFaceLoss",
    "target": FACE_TARGETS,
    "embedding_size": 512,
    "input_size": "112x112",
    "seed": 1337,
    "eval_freq": 2000,
    "save_freq": 1000,
    "log_freq": 20,
    "num_workers": 4,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "data_mode": "casia",
    "eval_root": "",
    "outdir": "",
    "resume": "",
    "resume_backbone": "",
    "resume_head": "",
    "max_steps": 0,
    "strict_data": False,
    "shard_head": False,
    "local_bn": False,
}

# Recommended SFace (a, b) per training set (TIP 2021): CASIA-WebFace 0.87/1.2,
# VGGFace2 0.88/1.25, MS1MV2 0.9/1.2. Data roots follow the official code's ./data/ layout.
DATA_MODES = {
    "casia": {"data_root": "data/faces_webface_112x112", "param_a": 0.87, "param_b": 1.2},
    "vgg": {"data_root": "data/faces_vgg_112x112", "param_a": 0.88, "param_b": 1.25},
    "ms1m": {"data_root": "data/faces_emore", "param_a": 0.9, "param_b": 1.2},
    # The embedded LFW subset (data/demo/README.md): sized for a few minutes on 2 CPU cores.
    "demo": {"data_root": "data/demo", "param_a": 0.87, "param_b": 1.2, "net": "MobileFaceNet",
             "target": "lfw_demo", "batch_size": 32, "epochs": 3, "stages": "2", "lr": 0.05,
             "eval_freq": 0, "save_freq": 200, "log_freq": 10, "num_workers": 2},
}


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a face-recognition backbone with the SFace loss. Run under "
                    "`mpirun -np N` for data parallelism over N processes. Options left unset take the "
                    "--data_mode preset's value, then the default shown.")

    def opt(name, type_, help_, **kw):
        # Every default is None, so the set of options the user gave is known (see resolve).
        if DEFAULTS.get(name) not in (None, ""):
            help_ += f" (default: {DEFAULTS[name]})"
        p.add_argument(f"--{name}", type=type_, default=None, help=help_, **kw)
    opt("workers_id", str, "GPU ids for the ranks, e.g. '0' or '0,1', or 'cpu'; 'auto' = GPU 0.. when CUDA works")
    opt("epochs", int, "training epochs")
    opt("stages", str, "comma-separated epochs at which the learning rate is divided by 10")
    opt("lr", float, "initial learning rate")
    opt("batch_size", int, "global batch size, split across MPI ranks")
    opt("data_mode", str, "dataset preset: default data root and recommended (a, b)", choices=sorted(DATA_MODES))
    opt("data_root", str, "folder holding imgs.txt (and property) or train.rec + train.idx; default from --data_mode")
    opt("net", str, "backbone: IR_18, IR_34, IR_50, IR_100 (= IR_101), IR_152, IR_SE_50, IR_SE_100, MobileFaceNet, "
                    "SphereFace4/20/36/64")
    opt("head", str, "loss head: SFaceLoss, Softmax, CosFace, AMSoftmax, ArcFace, SphereFace")
    opt("target", str, "comma-separated verification targets (names under --eval_root, .bin files or "
                       "pairs folders); 'none' disables evaluation")
    opt("eval_root", str, "folder holding the verification targets (default: the data root)")
    opt("resume", str, "checkpoint file (or an outdir holding last.npz) to continue exactly where it stopped: "
                       "weights, momentum, epoch, step, LR")
    opt("resume_backbone", str, "start from these backbone weights (a checkpoint of this project or an "
                                "official SFace-Jittor .pkl)")
    opt("resume_head", str, "start from these head weights (same formats)")
    opt("outdir", str, "output folder (default: results/<net>-<head>-<data_mode>, or the resumed checkpoint's)")
    opt("param_s", float, "scale s of SFace, CosFace, AMSoftmax, ArcFace (default: the head's: 64; AMSoftmax 30)")
    opt("param_k", float, "SFace sigmoid slope k (default: 80)")
    opt("param_a", float, "SFace intra-class sigmoid centre a in radians (default: the data mode's)")
    opt("param_b", float, "SFace inter-class sigmoid centre b in radians (default: the data mode's)")
    opt("param_m", float, "margin m of CosFace / AMSoftmax (0.35), ArcFace (0.5), SphereFace (4, an integer)")
    opt("embedding_size", int, "embedding dimension")
    opt("input_size", str, "network input HxW: 112x112, or 112x96 (SphereFace crop; 112x112 images are "
                           "cut by 8 columns per side)")
    opt("seed", int, "random seed (data order, flips, dropout, initial weights)")
    opt("eval_freq", int, "evaluate every N batches (0: only before and after training)")
    opt("save_freq", int, "write last.npz every N batches (also at each epoch end)")
    opt("log_freq", int, "log averaged training figures every N batches")
    opt("num_workers", int, "image-decoding threads per process")
    opt("weight_decay", float, "SGD weight decay (not applied to BatchNorm parameters)")
    opt("momentum", float, "SGD momentum")
    opt("max_steps", int, "stop after this many batches in all (0: no limit)")
    p.add_argument("--strict_data", action="store_true", default=None,
                   help="stop at the first missing or undecodable training image instead of skipping it")
    p.add_argument("--shard_head", action="store_true", default=None,
                   help="under mpirun, split the SFace class centres (and their optimizer state) over the ranks "
                        "instead of keeping a copy on each: for large identity counts")
    p.add_argument("--local_bn", action="store_true", default=None,
                   help="under mpirun, keep BatchNorm batch statistics per rank instead of synchronising them")
    return p


def parse_size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input_size must look like 112x112, got '{text}'") from None
    return height, width


def parse_int_list(text, option):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got '{text}'") from None


def parse_workers(text):
    """'cpu' -> [], 'auto' -> None (decided at start-up), '0,1' -> [0, 1]."""
    text = text.strip().lower()
    if text == "cpu":
        return []
    if text == "auto":
        return None
    return parse_int_list(text, "--workers_id")


def resolve(args):
    """argparse namespace -> validated run config dict."""
    cli = {k: v for k, v in vars(args).items() if v is not None}
    cfg = dict(DEFAULTS)
    cfg.update(DATA_MODES[cli.get("data_mode", DEFAULTS["data_mode"])])
    cfg.update(cli)
    cfg["given"] = sorted(cli)
    if "data_root" not in cli:  # presets name folders of this repository
        cfg["data_root"] = os.path.join(REPO_ROOT, cfg["data_root"])
    cfg["eval_root"] = cfg["eval_root"] or cfg["data_root"]
    cfg["outdir"] = cfg["outdir"] or os.path.join("results", f"{cfg['net']}-{cfg['head']}-{cfg['data_mode']}")
    cfg["targets"] = [] if cfg["target"].strip().lower() in ("", "none") else \
        [t.strip() for t in cfg["target"].split(",") if t.strip()]
    cfg["input_hw"] = list(parse_size(cfg["input_size"]))
    cfg["stage_epochs"] = parse_int_list(cfg["stages"], "--stages")
    cfg["gpu_ids"] = parse_workers(cfg["workers_id"])
    for key in ("epochs", "batch_size", "embedding_size", "log_freq", "num_workers"):
        if cfg[key] <= 0:
            raise ValueError(f"--{key} must be positive, got {cfg[key]}")
    for key in ("eval_freq", "save_freq", "max_steps"):
        if cfg[key] < 0:
            raise ValueError(f"--{key} must be >= 0, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ValueError(f"--lr must be positive, got {cfg['lr']}")
    cfg["head_params"] = head_params(cfg)
    if cfg["shard_head"] and cfg["head"] != "SFaceLoss":
        raise ValueError(f"--shard_head works with --head SFaceLoss only (the softmax heads normalise over every "
                         f"class), not {cfg['head']}")
    return cfg


def parse_config(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return resolve(args)
    except ValueError as e:
        parser.error(str(e))


def head_params(cfg):
    """The --param_<x> values for the chosen head; one the user gave that the head does not take is an error."""
    from head import HEAD_PARAMS
    if cfg["head"] not in HEAD_PARAMS:
        raise ValueError(f"unknown --head '{cfg['head']}'; choose from {', '.join(HEAD_PARAMS)}")
    takes = HEAD_PARAMS[cfg["head"]]
    refused = [k for k in cfg["given"] if k.startswith("param_") and k[len("param_"):] not in takes]
    if refused:
        raise ValueError(f"--head {cfg['head']} takes no {', '.join('--' + k for k in refused)}")
    return {p: cfg[f"param_{p}"] for p in takes if cfg.get(f"param_{p}") is not None}


def lr_at(cfg, epoch):
    """Learning rate of an epoch: divided by 10 at each listed stage already reached."""
    return cfg["lr"] * 0.1 ** sum(epoch >= s for s in cfg["stage_epochs"])
