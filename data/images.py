"""Decoding images and fitting them to a network's input: the one decoder of training, the data tools and
evaluation. Pixels come out as H x W x 3 uint8 RGB (3 x H x W float32 for training)."""
import cv2
import numpy as np

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length field


def entropy_data_end(data, pos):
    """Index of the marker that ends the compressed data starting at `pos`, or -1 if the data runs out first.

    Inside it, 0xFF is followed by 0x00 (a stuffed byte), an RST marker or more 0xFF fill bytes.
    """
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):
        following = data[pos + 1]
        if following not in (0x00, 0xFF) and following not in STANDALONE_MARKERS:
            return pos
        pos += 1 if following == 0xFF else 2
    return -1


def jpeg_is_whole(data):
    """Whether a JPEG's segments, read in order as a decoder reads them, reach the end-of-image marker.

    A file cut short never gets there (OpenCV would fill the missing part with grey and only
    warn); bytes after the marker are ignored, as decoders ignore them.
    """
    pos = 2
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):  # bytes before a marker are skipped
        marker = data[pos + 1]
        if marker == EOI:
            return True
        if marker == 0xFF or marker in STANDALONE_MARKERS:
            pos += 1 if marker == 0xFF else 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        pos = entropy_data_end(data, end) if marker == SOS else end
        if pos == -1:
            return False
    return False


def decode_image(data):
    """Encoded bytes -> H x W x 3 uint8 RGB, or None when they are not a whole image OpenCV decodes (an empty
    file and a header OpenCV refuses included).

    The one decoder of training, the data tools and evaluation: validity is decided by decoding,
    and for a JPEG by its segments reaching the end-of-image marker (see jpeg_is_whole).
    """
    if not data or data[:2] == bytes((0xFF, SOI)) and not jpeg_is_whole(data):
        return None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # a header OpenCV refuses, e.g. one claiming more than CV_IO_MAX_IMAGE_PIXELS pixels
        return None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def undecodable(data):
    """Why `decode_image` returned None for `data`, as messages say it."""
    return "not a decodable image" + ("" if data else " (an empty file)")


def parse_size(text):
    """'112x96' -> (112, 96): a network input size, as every command line writes it."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input_size must look like 112x112, got '{text}'") from None
    return height, width


def fit_width(image, width):
    """Cut equal margins off both sides: 112x112 aligned faces -> the 112x96 SphereFace crop."""
    margin = (image.shape[1] - width) // 2
    return image[:, margin:margin + width] if margin > 0 else image


def fit_input_size(image, input_size):
    """Decoded image -> (its crop to the network's H x W, None), or (None, reason) when its size does not fit."""
    height, width = input_size
    image = fit_width(image, width)
    if image.shape[:2] != (height, width):
        return None, f"size {image.shape[0]}x{image.shape[1]}, expected {height}x{width}"
    return image, None


def prepare_image(data, input_size):
    """Encoded bytes -> (H x W x 3 uint8 RGB of the network's input size, None) or (None, reason)."""
    image = decode_image(data)
    if image is None:
        return None, undecodable(data)
    return fit_input_size(image, input_size)


def network_input(data, input_size, flip):
    """Encoded bytes -> (3 x H x W float32 RGB array, None) or (None, reason): what training consumes."""
    image, problem = prepare_image(data, input_size)
    if problem is not None:
        return None, problem
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), None
