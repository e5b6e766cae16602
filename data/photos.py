"""Photos as people have them, to aligned faces: read, faces found, one chosen, aligned to a network's template.

Reading builds on `data.images.decode_image` (the project's one decoder, with its checks), which already turns
JPEG and PNG photos upright by their EXIF orientation (OpenCV's imdecode applies it) and makes
grey and CMYK ones RGB. A transparent photo is laid over black, the colour alignment gives the
area outside a photo, so that what hides under transparent pixels cannot reach a crop.
"""
import cv2
import numpy as np

from .alignment import align_face, similarity_transform, template_for
from .images import decode_image, undecodable
from .text import DataError

JPEG_START = b"\xff\xd8"  # a JPEG has no alpha channel: no second decode
ALIASING_SCALE = 0.5  # a face shrunk more than this into its crop is first resized with area averaging


def orientations(array):
    """The 8 turns and mirror images of an H x W (x C) array."""
    for mirrored in (array, array[:, ::-1]):
        for quarter_turns in range(4):
            yield np.rot90(mirrored, quarter_turns)


def oriented_alpha(stored, image):
    """The alpha channel of `stored` (as the file stores it, BGRA) turned as the decoder turned its colours into
    the RGB `image` (an EXIF orientation), as float in [0, 1]; None when no turn matches."""
    colours = stored[..., :3] if stored.dtype == np.uint8 else (stored[..., :3] >> 8).astype(np.uint8)
    colours = cv2.cvtColor(np.ascontiguousarray(colours), cv2.COLOR_BGR2RGB)
    alpha = stored[..., 3].astype(np.float32) / np.iinfo(stored.dtype).max
    for turned, turned_alpha in zip(orientations(colours), orientations(alpha)):
        if turned.shape == image.shape and np.array_equal(turned, image):
            return turned_alpha
    return None


def decode_photo(data):
    """Encoded bytes -> H x W x 3 uint8 RGB, upright, transparency over black; None when not a decodable image."""
    image = decode_image(data)
    if image is None or data[:2] == JPEG_START:
        return image
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if stored is None or stored.ndim != 3 or stored.shape[2] != 4 or stored.dtype not in (np.uint8, np.uint16):
        return image
    alpha = oriented_alpha(stored, image)
    return image if alpha is None else np.round(image * alpha[..., None]).astype(np.uint8)


def read_photo(path):
    """A photo file -> H x W x 3 uint8 RGB; DataError naming the file when it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    image = decode_photo(data)
    if image is None:
        raise DataError(f"{path}: {undecodable(data)}")
    return image


def choose_face(faces, rank, path):
    """The `rank`-th largest of `faces` (1: the largest); DataError naming `path` when there is none such."""
    if not faces:
        raise DataError(f"{path}: no face found")
    if rank > len(faces):
        raise DataError(f"{path}: {len(faces)} face{'s' if len(faces) > 1 else ''} found, face {rank} asked for")
    return faces[rank - 1]


def aligned_crop(image, landmarks, input_hw):
    """The face with these 5 landmarks aligned to the template of a network taking `input_hw` faces.

    A face much larger than the crop is first shrunk with area averaging: sampling it with bilinear
    interpolation alone would skip pixels and alias fine detail (hair, glasses, textures).
    """
    template = template_for(input_hw)
    scale = np.sqrt(abs(np.linalg.det(similarity_transform(landmarks, template)[:, :2])))
    if scale < ALIASING_SCALE:
        shrink = scale / ALIASING_SCALE
        size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
        factors = np.array(size) / (image.shape[1], image.shape[0])
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        landmarks = (np.asarray(landmarks) + 0.5) * factors - 0.5  # pixel centres at integers
    return align_face(image, landmarks, template, tuple(input_hw))


def photo_face(detector, path, input_hw, rank=1):
    """A photo file -> its `rank`-th largest face aligned for a network taking `input_hw` faces."""
    image = read_photo(path)
    face = choose_face(detector.detect(image), rank, path)
    return aligned_crop(image, face.landmarks, input_hw)
