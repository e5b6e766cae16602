"""Which training set a data root holds: an imgs.txt list, or InsightFace's train.rec + train.idx."""
import os

from .image_list import LIST_NAME, DataError, ImageListDataset, read_image_list
from .rec import IDX_NAME, REC_NAME, RecDataset


def open_training_set(root, input_size=(112, 112)):
    """The dataset of `root`: its imgs.txt list when it has one, else its .rec/.idx pair read directly."""
    if os.path.isfile(os.path.join(root, LIST_NAME)):
        return ImageListDataset(read_image_list(root), input_size)
    if os.path.isfile(os.path.join(root, REC_NAME)) and os.path.isfile(os.path.join(root, IDX_NAME)):
        return RecDataset(root, input_size)
    raise DataError(f"{root}: holds neither {LIST_NAME} nor {REC_NAME} + {IDX_NAME} (a training set needs one of them)")
