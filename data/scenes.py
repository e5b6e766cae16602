"""Synthetic photos made from aligned face crops, with the transform that placed each face known exactly.

For measuring detection and alignment (tests, the benchmark, experiments/lfw_scenes.py): a crop
turned, scaled and moved into a larger canvas, so that any point of the crop (its landmarks) has a
known place in the photo. Coordinates count pixels from 0 with pixel centres at integers, as
cv2.warpAffine's do.
"""
import cv2
import numpy as np

BACKGROUND_CELL = 16  # pixels per random value of the smooth background


def placement(crop_hw, angle, scale, centre):
    """2 x 3 matrix taking crop coordinates into the photo: turned by `angle` degrees (counter-clockwise on
    screen) and scaled by `scale` about the crop's centre, which lands at `centre` (x, y)."""
    height, width = crop_hw
    middle = ((width - 1) / 2, (height - 1) / 2)
    matrix = cv2.getRotationMatrix2D(middle, angle, scale)
    matrix[:, 2] += np.asarray(centre, np.float64) - middle
    return matrix


def apply(matrix, points):
    """N x 2 points through a 2 x 3 affine matrix."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix):
    """The 2 x 3 matrix of the inverse affine map."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def smooth_background(rng, photo_hw):
    """A textured H x W x 3 uint8 background: random colours on a coarse grid, interpolated."""
    height, width = photo_hw
    coarse = rng.integers(0, 256, (height // BACKGROUND_CELL + 2, width // BACKGROUND_CELL + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def paste(photo, crop, matrix):
    """`crop` drawn into a copy of `photo` through `matrix` (bilinear); the photo shows around it."""
    return cv2.warpAffine(crop, matrix, (photo.shape[1], photo.shape[0]), dst=photo.copy(), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_TRANSPARENT)


def random_scene(crop, rng, photo_hw, angles=(-20, 20), scales=(1.2, 1.8), offset=20, background=None):
    """The crop at a random angle, scale and offset from the photo's centre (up to `offset` pixels in x and y)
    -> (H x W x 3 photo, the placement matrix). background: H x W x 3, or None for mid grey."""
    height, width = photo_hw
    angle, scale = rng.uniform(*angles), rng.uniform(*scales)
    centre = ((width - 1) / 2 + rng.uniform(-offset, offset), (height - 1) / 2 + rng.uniform(-offset, offset))
    matrix = placement(crop.shape[:2], angle, scale, centre)
    photo = np.full((height, width, 3), 128, np.uint8) if background is None else background
    return paste(photo, crop, matrix), matrix
