"""One optimizer step of each kind of run, on this rank's part of the global batch.

Each returns the global batch's figures (alike on every rank): means weighted by the ranks'
shares of the batch, and counts summed.
"""
import jittor as jt
import numpy as np

from data.degradations import quality_augment
from data.label_noise import other_classes
from evaluation.angles import angles
from head.class_centres import cosine, target_mask
from head.scf import scf_loss
from util import distributed

from .amp import float16_scope


class NonFiniteError(ArithmeticError):
    pass


def step_figures(figures, share, counts):
    """This rank's figures (scalar Vars, means over its images) and counts -> the global batch's, as one step."""
    return dict(distributed.global_figures({k: v.item() for k, v in figures.items()}, share, counts), steps=1)


def stop_if_not_finite(stats, step):
    """A NaN or infinite loss stops the run here, before these weights can be written: the last checkpoint
    is the last good state (under --amp such a step was skipped instead, see train/amp.py)."""
    if not np.isfinite(stats["loss"]):
        raise NonFiniteError(f"training step {step + 1}: the loss is {stats['loss']} (diverged, or bad input); "
                             "stopped before writing these weights, so the last checkpoint is the last finite "
                             "state: resume from it with a lower --lr")


# The stream of the non-target classes drawn for the angle diagnostics, apart from every other draw.
ANGLE_DRAW = 7


def step_angles(head, cos, labels, seed, step):
    """The global batch's target angles and, per sample, the angle to one other class drawn uniformly from
    (seed, step): two lists of floats, alike on every rank.

    Read from the step's B x C cosines after the update, by a gather of 2 B entries that runs on its own,
    so the step's graph (and its numbers) is what it would be without it. A sharded head holds the
    global batch against its block of classes: each rank contributes the entries in its block.
    """
    counts = distributed.gather_counts(len(labels))
    all_labels = distributed.all_gather_rows(np.asarray(labels, np.int64), counts)
    num_classes = head.num_classes if head.sharded else cos.shape[1]
    columns = (all_labels, other_classes(all_labels, num_classes, np.random.default_rng([seed, step, ANGLE_DRAW])))
    if head.sharded:
        rows = jt.array(np.arange(len(all_labels)))
        picked = []
        for cols in columns:
            inside = (cols >= head.start) & (cols < head.stop)
            block = cos[rows, jt.array(np.where(inside, cols - head.start, 0))].numpy()
            picked.append(distributed.sum_arrays(np.where(inside, block, 0.0).astype(np.float64)))
    else:
        start = sum(counts[:distributed.rank()])
        own = slice(start, start + len(labels))
        rows = jt.array(np.arange(len(labels)))
        picked = [distributed.all_gather_rows(cos[rows, jt.array(cols[own])].numpy(), counts) for cols in columns]
    return {"theta_target": angles(picked[0]).tolist(), "theta_other": angles(picked[1]).tolist()}


def embed(backbone, images, amp):
    """The batch's float32 embeddings, as a temporary of the caller.

    No Python name may hold them across the optimizer step: jt.grad (retain_graph=False) cuts the graph
    behind every Var except those Python holds, so a held backbone output keeps a differentiable path
    from the parameters, and every activation on it stays allocated after its last use in the step
    (MobileFaceNet, batch 16: 867 MB live at the step's peak instead of 512 MB, docs/benchmark.md)."""
    with float16_scope(amp):
        embeddings = backbone(jt.array(images))
    return embeddings.float32() if amp else embeddings


def sface_step(model, seed, images, labels, step, amp=False):
    """Backbone and loss head (any head of head/) learn together (SGD); with `amp` the backbone runs in
    float16 and the head in float32 (train/amp.py). The figures include the step's angles (`step_angles`)."""
    rank = distributed.rank()
    jt.set_seed((seed * 1_000_003 + step) * 1_009 + rank)  # dropout masks from (seed, step, rank): resumable
    out = model.head(embed(model.backbone, images, amp), jt.array(labels), step)
    # Each rank minimises (and reports) its part of the global batch's loss: a sharded head's output
    # already is one; the others' are means over this rank's images, weighted by its share of the batch.
    share = 1.0 if model.head.sharded else distributed.batch_share(len(labels))
    model.optimizer.step(out.loss * share)
    figures = {"loss": out.loss, "cos_target": out.cos_target, "cos_other": out.cos_other, **out.parts}
    stats = step_figures(figures, share, {"correct": out.correct.item(), "samples": len(labels)})
    stats.update(step_angles(model.head, out.cos, labels, seed, step))
    if amp:
        stats["loss_scale"] = model.optimizer.loss_scale.scale
    else:
        stop_if_not_finite(stats, step)
    return stats


def scf_step(model, centres, cfg, images, labels, step):
    """Only the confidence head learns (Adam); backbone and class centres stay frozen."""
    if cfg["quality_augment"]:
        images = quality_augment(images, cfg["quality_augment"],
                                 np.random.default_rng([cfg["seed"], step, distributed.rank()]))
    with jt.no_grad():
        features = model.backbone.features(jt.array(images))
        cos = cosine(model.backbone.embedding(features), centres)
        cos_target = (cos * target_mask(jt.array(labels), cos)).sum(1)
    kappa = model.head(features)
    loss = scf_loss(kappa, cos_target, cfg["embedding_size"], cfg["radius"])
    share = distributed.batch_share(len(labels))
    model.optimizer.step(loss * share)
    stats = step_figures({"loss": loss, "kappa": kappa.mean(), "cos_target": cos_target.mean()}, share,
                         {"samples": len(labels)})
    stop_if_not_finite(stats, step)
    return stats
