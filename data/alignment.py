"""Five-point face alignment to the 112x112 ArcFace template (or the 112x96 SphereFace one).

The transform is the least-squares similarity (rotation, uniform scale, translation) taking the
five detected landmarks onto the template, in closed form (Umeyama 1991), numpy only: every
landmark counts, and the same landmarks always give the same crop. That is the estimate
InsightFace's IJB evaluation takes (scikit-image's SimilarityTransform). OpenCV's
`estimateAffinePartial2D` would fit the same model but defaults to RANSAC, which may drop
landmarks as outliers, differently from run to run.
"""
import cv2
import numpy as np

# (x, y) of the left eye, right eye, nose tip, left and right mouth corners in a 112x112 crop
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])
ALIGNED_SIZE = (112, 112)
# The same points in a 112x96 crop: ArcFace's 8 px to the left, so that aligning to it equals aligning to
# ArcFace's template and cutting 8 columns off each side, as 112x96 models take 112x112 faces (fit_width)
SPHEREFACE_TEMPLATE = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                                [33.5493, 92.3655], [62.7299, 92.2041]])
TEMPLATES = {(112, 112): ARCFACE_TEMPLATE, (112, 96): SPHEREFACE_TEMPLATE}


def template_for(input_hw):
    """The landmark template of a network taking `input_hw` (H, W) faces; ValueError for a size without one."""
    if tuple(input_hw) not in TEMPLATES:
        raise ValueError(f"no 5-point template for {input_hw[0]}x{input_hw[1]} faces; faces are aligned for "
                         + " or ".join(f"{h}x{w}" for h, w in TEMPLATES) + " models")
    return TEMPLATES[tuple(input_hw)]


def similarity_transform(source, target):
    """2 x 3 matrix M of the similarity minimising sum |M [p; 1] - q|^2 over the point pairs (p, q).

    source, target: N x 2 points (N >= 2), not all source points equal. No reflection is allowed.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - source_mean, target - target_mean
    variance = np.mean(np.sum(src * src, axis=1))
    if not variance > 1e-12:
        raise ValueError("the landmarks all lie at one point")
    u, singular, vt = np.linalg.svd(dst.T @ src / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image, landmarks, template=ARCFACE_TEMPLATE, size=ALIGNED_SIZE):
    """H x W x 3 image and its 5 x 2 landmarks (x, y) -> the size[0] x size[1] aligned crop.

    Bilinear resampling; pixels from outside the image are black (as InsightFace's IJB evaluation).
    """
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderValue=0)
