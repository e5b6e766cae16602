"""Controlled image degradations, to check that a confidence estimate (SCF's kappa) drops with quality.

Each takes and returns an H x W x 3 uint8 RGB face of the same size.
"""
import cv2
import numpy as np


def blur(image, sigma=3.0):
    return cv2.GaussianBlur(image, (0, 0), sigma)


def occlude(image, top=0.30, bottom=0.55):
    """A grey bar across the face (by default over the eyes, rows 30-55 % of the height), like sunglasses."""
    out = image.copy()
    height = image.shape[0]
    out[int(top * height):int(bottom * height)] = 128
    return out


def downscale(image, size=24):
    """Down to size x size pixels and back up: a low-resolution capture."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (size, size * height // width), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


DEGRADATIONS = {"blurred": blur, "occluded": occlude, "downscaled": downscale}


def degrade_all(images, how):
    return np.stack([DEGRADATIONS[how](image) for image in images])


def random_degradation(image, rng):
    """One of the three kinds at a random strength and place (for training-time quality augmentation)."""
    kind = rng.integers(3)
    if kind == 0:
        return blur(image, sigma=rng.uniform(1.0, 4.0))
    if kind == 1:
        return downscale(image, size=int(rng.integers(14, 48)))
    top = rng.uniform(0.1, 0.6)
    return occlude(image, top, top + rng.uniform(0.15, 0.35))


def quality_augment(images, probability, rng):
    """Degrade a random subset of a N x 3 x H x W float batch (0..255) in place, each by `random_degradation`."""
    for i in np.flatnonzero(rng.random(len(images)) < probability):
        face = np.ascontiguousarray(images[i].transpose(1, 2, 0).astype(np.uint8))
        images[i] = random_degradation(face, rng).transpose(2, 0, 1)
    return images
