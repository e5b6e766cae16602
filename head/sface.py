"""SFace: sigmoid-constrained hypersphere loss (Zhong et al., TIP 2021).

For cos_ij = <x_i/|x_i|, W_j/|W_j|> and theta_ij = acos(cos_ij):
    loss = 1/B * sum_i [ -r_intra(theta_iy) * s * cos_iy + sum_{j != y_i} r_inter(theta_ij) * s * cos_ij ]
    r_intra(t) = 1 / (1 + exp(-k (t - a))),   r_inter(t) = 1 / (1 + exp(k (t - b)))
with both r's gradient-blocked. The loss has no softmax: it is a sum of independent
per-(sample, class) terms, which is why `sface_terms` can work on any block of the class
centres and the blocks' sums simply add up (`ShardedSFaceLoss`).
"""
import jittor as jt
import numpy as np

from util import distributed

from .class_centres import ClassCentres, HeadOutput, centre_rows, cosine, count_correct, mean_cosines, target_mask


def sface_weights(cos, mask, k, a, b):
    """Per-element re-scale factors -r_intra (target) or +r_inter (others); no gradient flows through them."""
    theta = jt.acos(cos.clamp(-1.0, 1.0))  # rounding can push |cos| past 1
    r_intra = 1.0 / (1.0 + jt.exp(-k * (theta - a)))
    r_inter = 1.0 / (1.0 + jt.exp(k * (theta - b)))
    return (mask * -r_intra + (1.0 - mask) * r_inter).stop_grad()


def sface_terms(cos, mask, s, k, a, b, others=None):
    """(intra sum, inter sum) over a B x C' block of cosines, its target mask and the mask of the
    non-target classes that count (default: all the others).

    Divide by the global batch size after adding the sums of every block.
    """
    others = 1.0 - mask if others is None else others
    scaled = sface_weights(cos, mask, k, a, b) * (s * cos)
    return (mask * scaled).sum(), (others * scaled).sum()


def sface_loss(embeddings, centres, labels, s=64.0, k=80.0, a=0.87, b=1.2):
    """The whole loss for one block holding every class; returns a `HeadOutput`."""
    cos = cosine(embeddings, centres)
    mask = target_mask(labels, cos)
    intra, inter = sface_terms(cos, mask, s, k, a, b)
    batch = embeddings.shape[0]
    cos_target, cos_other = mean_cosines(cos, mask)
    logits = s * cos
    return HeadOutput(logits=logits, loss=(intra + inter) / batch, correct=count_correct(logits, mask),
                      cos_target=cos_target, cos_other=cos_other, parts={"intra": intra / batch, "inter": inter / batch},
                      cos=cos)


class SFaceLoss(ClassCentres):
    """Class centres W (num_classes x embedding_size) and the SFace loss on them."""

    def __init__(self, embedding_size, num_classes, s=64.0, k=80.0, a=0.87, b=1.2, seed=0):
        super().__init__(embedding_size, num_classes, seed)
        self.s, self.k, self.a, self.b = s, k, a, b

    def execute(self, embeddings, labels, step=0):
        return sface_loss(embeddings, self.weight, labels, self.s, self.k, self.a, self.b)


# What the sharded head's all-reduces carry.
GLOBAL_BATCH = "embeddings of the global batch (sharded head)"
ACCURACY_SUMS = "train-accuracy bookkeeping (sharded head)"


class ShardedSFaceLoss(ClassCentres):
    """SFace with its class centres split over the MPI ranks (model parallelism, exact).

    Rank r holds the classes [start, stop) of `distributed.rank_share(C, r, N)`, padded to ceil(C / N)
    rows so that every rank builds a graph of the same shapes (the padding rows count for
    nothing). The ranks' embeddings are gathered into the global batch, each rank scores it
    against its block, and the gradient with respect to the embeddings flows back to the
    rank that computed them. The centres, their gradients and their optimizer state never
    leave their rank; per step only the B x D embeddings (and labels) travel.

    Every figure of the output (loss, parts, cosines, correct) is this rank's part of the
    global figure: summed over the ranks, they equal the unsharded head's on the whole batch.
    """
    sharded = True

    def __init__(self, embedding_size, num_classes, s=64.0, k=80.0, a=0.87, b=1.2, seed=0,
                 rank=None, world_size=None):
        rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        self.num_classes = num_classes
        self.block_sizes = [hi - lo for lo, hi in (distributed.rank_share(num_classes, r, self.world_size)
                                                    for r in range(self.world_size))]
        self.start, self.stop = distributed.rank_share(num_classes, rank, self.world_size)
        own = centre_rows(num_classes, embedding_size, self.start, self.stop, seed)
        padding = np.full((max(self.block_sizes) - len(own), embedding_size), 0.1, np.float32)
        self.weight = jt.array(np.concatenate([own, padding]))
        self.s, self.k, self.a, self.b = s, k, a, b

    def execute(self, embeddings, labels, step=0):
        counts = distributed.gather_counts(embeddings.shape[0])
        all_labels = jt.array(distributed.all_gather_rows(labels.numpy().astype(np.int64), counts))
        gathered = distributed.all_gather_var(embeddings, counts, GLOBAL_BATCH)  # B x D
        batch = gathered.shape[0]
        cos = cosine(gathered, self.weight)  # B x rows
        valid = (jt.arange(cos.shape[1]) < self.stop - self.start).float32().unsqueeze(0)
        mask = target_mask(all_labels, cos, self.start) * valid
        others = (1.0 - mask) * valid
        intra, inter = sface_terms(cos, mask, self.s, self.k, self.a, self.b, others)
        return HeadOutput(logits=self.s * cos, loss=(intra + inter) / batch,
                          correct=self._own_correct(cos, mask, others, counts),
                          cos_target=(mask * cos).sum() / batch,
                          cos_other=(others * cos).sum() / (batch * max(self.num_classes - 1, 1)),
                          parts={"intra": intra / batch, "inter": inter / batch}, cos=cos)

    def _own_correct(self, cos, mask, others, counts):
        """How many of this rank's own samples have their target cosine above every other class's, on any rank."""
        cos = cos.detach()  # not stop_grad(): that one flags `cos` itself and would cut the loss's gradient
        target = distributed.all_reduce_sum([(mask * cos).sum(dim=1)], ACCURACY_SUMS)[0]  # known to every rank
        best_other = (others * cos - 3.0 * (1.0 - others)).max(dim=1)  # -3: no competitor in this block
        blocks_beaten = distributed.all_reduce_sum([(target >= best_other).float32()], ACCURACY_SUMS)[0]
        start = sum(counts[:distributed.rank()])
        own = blocks_beaten[start:start + counts[distributed.rank()]]
        return (own >= self.world_size - 0.5).sum()

    # ---- the whole head in checkpoints ----

    def gather_block(self, array):
        """This rank's rows of a centre-shaped array (weights, momentum) -> all C rows on rank 0, None elsewhere."""
        return distributed.gather_rows_to_main(array[:self.stop - self.start], self.block_sizes)

    def take_block(self, full, current):
        """All C rows (from a checkpoint) -> this rank's rows, keeping `current`'s padding rows."""
        own = self.stop - self.start
        return np.concatenate([np.asarray(full)[self.start:self.stop], np.asarray(current)[own:]])
