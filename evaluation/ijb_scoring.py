"""IJB-B / IJB-C 1:1 template verification: faces embedded over the ranks, pooled into templates, pairs scored.

Pooling is arcface_torch's eval_ijbc in its default mode: a face's feature is its embedding
plus that of its mirror image, times its detector score, not normalised (so its norm weights
it too); a media's feature is the mean of its faces in the template; a template's feature is
the sum of its media's features, L2-normalised. Pairs are compared by the squared Euclidean
distance of the unit template features (2 - 2 cos: the same order as cosine scores).

With an SCF checkpoint a second row pools each template by SCF eq. 14 (the kappa-weighted sum
of its faces' unit embeddings: direction and concentration) and scores pairs with eq. 13.

TAR@FAR is `protocol.roc_figures`: the highest TAR over ROC points whose FAR does not exceed
the target (arcface_torch reads the ROC point nearest the target, on either side of it).
"""
from concurrent.futures import ThreadPoolExecutor

import jittor as jt
import numpy as np
from tqdm import tqdm

from util import distributed

from .embedding import embed_images, image_kappas
from .protocol import l2_normalize, pair_distances, roc_figures
from .scf_scoring import SCF_TARGET_SUFFIX, pair_scores, pool_template

IJB_FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_CHUNK = 100_000  # pairs scored at a time: IJB-C's 15.7 million at once would take tens of GB
FACE_CHUNK_BATCHES = 8  # forward batches of faces read and aligned ahead of the network


# ---- pooling and scoring (numpy) ----

def group_order(groups, num_groups):
    """(order sorting `groups` 0..num_groups-1, where each group starts in it); every group must be present."""
    order = np.argsort(groups, kind="stable")
    return order, np.searchsorted(groups[order], np.arange(num_groups))


def group_sums(values, groups, num_groups):
    """Row sums of `values` per group (float64)."""
    order, starts = group_order(groups, num_groups)
    return np.add.reduceat(values[order], starts, axis=0, dtype=np.float64)


def pool_templates(features, templates, medias):
    """Face features -> (sorted distinct template ids, T x d unit template features).

    The mean of each media's faces within a template, summed over the template's media, normalised.
    """
    template_ids, template_of_face = np.unique(templates, return_inverse=True)
    media_keys, media_of_face, faces_per_media = np.unique(np.stack([template_of_face, medias], axis=1), axis=0,
                                                           return_inverse=True, return_counts=True)
    media_means = group_sums(features, media_of_face.ravel(), len(media_keys)) / faces_per_media[:, None]
    return template_ids, l2_normalize(group_sums(media_means, media_keys[:, 0], len(template_ids)))


def scf_pool_templates(mu, kappa, templates):
    """SCF eq. 14 per template over its faces -> (sorted template ids, T x d directions, T concentrations)."""
    template_ids, template_of_face = np.unique(templates, return_inverse=True)
    order, starts = group_order(template_of_face, len(template_ids))
    pooled = [pool_template(mu[faces], kappa[faces].astype(np.float64)) for faces in np.split(order, starts[1:])]
    return template_ids, np.stack([m for m, _ in pooled]), np.array([k for _, k in pooled])


def chunked(score, rows, chunk=PAIR_CHUNK):
    """score(rows[i:i + chunk]) for each chunk of the P x 2 pair rows, concatenated."""
    return np.concatenate([score(rows[start:start + chunk]) for start in range(0, len(rows), chunk)])


def ijb_report(distances, issame, name, counts):
    """ROC figures of one IJB row (smaller distance = same subject) with TAR at FAR 1e-6 .. 1e-1."""
    roc = roc_figures(distances, issame, IJB_FAR_TARGETS)
    return dict(target=name, **counts, auc=roc["auc"], eer=roc["eer"],
                tar_at_far={f"{far:g}": tar for far, tar in roc["tar_at_far"].items()},
                threshold_at_far={f"{far:g}": t for far, t in roc["threshold_at_far"].items()},
                roc=(roc["fpr"], roc["tpr"]))


def ijb_reports(ijb, features, radius=None):
    """The template-pooled row (and the SCF row when `features` hold kappas) of an `IJBSet`'s pairs.

    features: raw (F x d, flip-summed), unit (the same L2-normalised), kappa (F, or None).
    """
    counts = {"faces": len(ijb.images), "templates": len(np.unique(ijb.templates)), "pairs": len(ijb.pairs),
              "genuine_pairs": int(ijb.issame.sum())}
    weighted = features["raw"] * ijb.scores[:, None].astype(features["raw"].dtype)  # float32 for IJB-C's 469k faces
    template_ids, unit = pool_templates(weighted, ijb.templates, ijb.medias)
    unit = unit.astype(np.float32)  # halves the memory traffic of gathering 15.7 million pairs' rows
    rows = np.searchsorted(template_ids, ijb.pairs)
    reports = [ijb_report(chunked(lambda r: pair_distances(unit, r), rows), ijb.issame, ijb.name, counts)]
    if features["kappa"] is not None:
        template_ids, mu, kappa = scf_pool_templates(features["unit"], features["kappa"], ijb.templates)
        rows = np.searchsorted(template_ids, ijb.pairs)
        scores = chunked(lambda r: pair_scores(mu[r[:, 0]], kappa[r[:, 0]], mu[r[:, 1]], kappa[r[:, 1]], radius), rows)
        reports.append(ijb_report(-scores, ijb.issame, ijb.name + SCF_TARGET_SUFFIX, counts))
    return reports


# ---- embedding over the ranks ----

def aligned_chunks(ijb, indices, input_size, size, pool):
    """The faces `indices` aligned, `size` at a time; the next chunk is read while the caller embeds this one."""
    def submit(start):
        return [pool.submit(ijb.aligned, i, input_size) for i in indices[start:start + size]]

    pending = submit(0)
    for start in range(0, len(indices), size):
        current, pending = pending, submit(start + size)
        yield np.stack([f.result() for f in current])


def ijb_features(backbone, ijb, input_size, batch_size, flip=True, confidence_head=None, num_threads=4):
    """Each rank embeds its share of the faces, streamed; -> dict(raw, unit, kappa or None) on rank 0, else None.

    raw: embedding (+ mirror embedding) of every face, not normalised. The models are left in eval mode.
    """
    share = distributed.rank_share(len(ijb.images), distributed.rank(), distributed.world_size())
    indices = np.arange(*share)
    backbone.eval()
    if confidence_head is not None:
        confidence_head.eval()
    raw, kappa = [], []
    progress = tqdm(total=len(indices), desc=f"embedding {ijb.name}", leave=False,
                    disable=None if distributed.is_main() else True)
    with ThreadPoolExecutor(num_threads) as pool, jt.no_grad():
        for faces in aligned_chunks(ijb, indices, input_size, batch_size * FACE_CHUNK_BATCHES, pool):
            embeddings, flipped = embed_images(backbone, faces, batch_size, flip)
            raw.append(embeddings if flipped is None else embeddings + flipped)
            if confidence_head is not None:
                kappa.append(image_kappas(backbone, confidence_head, faces, batch_size))
            progress.update(len(faces))
    progress.close()
    counts = distributed.gather_counts(len(indices))
    raw = distributed.gather_rows_to_main(np.concatenate(raw) if raw else np.zeros((0, 0), np.float32), counts)
    if confidence_head is not None:
        kappa = distributed.gather_rows_to_main(np.concatenate(kappa) if kappa else np.zeros(0, np.float32), counts)
    if not distributed.is_main():
        return None
    return {"raw": raw, "unit": l2_normalize(raw), "kappa": kappa if confidence_head is not None else None}
