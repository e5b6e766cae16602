"""DataError, the error that names the file and line of bad data, and reading the users' text files
(imgs.txt, property, pairs.txt, train.idx, IJB meta files) line by line."""
import codecs

from util.errors import InputError


class DataError(InputError):
    """Bad training data, with the file (and line) at fault in the message."""


def text_lines(path):
    """(line number, text) of each line of a UTF-8 text file (imgs.txt, property, pairs.txt, train.idx).

    A leading byte-order mark (some Windows editors write one) is dropped; a line that is not
    UTF-8 is refused naming `path:LINE`, instead of a traceback that names no file.
    """
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); save the file as UTF-8") from None
