"""Run under `mpirun -np N` (or alone): the sharded SFace head against the unsharded one.

Both heads start from the same centres and see the same global batch, split unevenly over
the ranks. The unsharded head is used as data parallelism uses it: each rank's mean loss
weighted by its share of the batch, centre gradients summed over the ranks. Checked: the
summed losses and figures, each rank's embedding gradients, and the sharded centre
gradients gathered into one C x D table. Rank 0 prints 'ok' and a summary on success;
any mismatch raises, which ends the job with a non-zero status.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from head import build_head  # noqa: E402
from util import distributed  # noqa: E402
from util.distributed import rank_share  # noqa: E402

NUM_CLASSES, DIM, BATCH = 7, 16, 5  # 7 classes and 5 samples split unevenly over 2 or 3 ranks


def main():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    labels = np.array([0, 6, 3, 3, 5])
    rank, world = distributed.rank(), distributed.world_size()
    lo, hi = rank_share(BATCH, rank, world)
    params = {"s": 64.0, "k": 80.0, "a": 0.87, "b": 1.2}
    plain = build_head("SFaceLoss", DIM, NUM_CLASSES, seed=5, **params)
    sharded = build_head("SFaceLoss", DIM, NUM_CLASSES, seed=5, shard=True, **params)
    # the initial centres of one are the other's, block for block
    np.testing.assert_array_equal(sharded.weight.numpy()[:sharded.stop - sharded.start],
                                  plain.weight.numpy()[sharded.start:sharded.stop])
    embeddings[0] = plain.weight.numpy()[0] * 3.0  # an embedding on its own centre: cos = 1
    figures = {}
    for name, head in (("plain", plain), ("sharded", sharded)):
        local = jt.array(embeddings[lo:hi])
        out = head(local, jt.array(labels[lo:hi]))
        share = 1.0 if head.sharded else (hi - lo) / BATCH
        grad_embeddings, grad_centres = jt.grad(out.loss * share, [local, head.weight])
        values = [out.loss.item() * share, out.parts["intra"].item() * share, out.parts["inter"].item() * share,
                  out.cos_target.item() * share, out.cos_other.item() * share, out.correct.item()]
        centres = grad_centres.numpy()
        figures[name] = {
            "summed": distributed.sum_arrays(np.array(values, np.float64)),
            "grad_embeddings": grad_embeddings.numpy(),
            "grad_centres": head.gather_block(centres) if head.sharded else distributed.sum_arrays(centres)}
    for key in ("summed", "grad_embeddings"):
        assert np.all(np.isfinite(figures["sharded"][key])), key
        np.testing.assert_allclose(figures["sharded"][key], figures["plain"][key], rtol=1e-5, atol=1e-6, err_msg=key)
    if distributed.is_main():
        np.testing.assert_allclose(figures["sharded"]["grad_centres"], figures["plain"]["grad_centres"],
                                   rtol=1e-5, atol=1e-6, err_msg="grad_centres")
        loss, intra, inter, cos_target, cos_other, correct = figures["sharded"]["summed"].tolist()
        print("ok " + json.dumps({"world_size": world, "loss": loss, "correct": correct,
                                  "blocks": sharded.block_sizes}))


if __name__ == "__main__":
    distributed.run_main(main)
