"""Argument types every command line shares: numbers are checked where they are typed, so a bad value is a
usage error naming its flag before any work (an --lr nan would train NaN weights)."""
import argparse
import math


def finite_float(text):
    """A float option's type: NaN and infinity are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def probability(text):
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a probability is from 0 to 1, got {value:g}")
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def non_negative_float(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None


def positive_int(text):
    value = integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_int(text):
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


SEED_LIMIT = 2**32  # numpy's SeedSequence takes no negative seed; 32 bits name more runs than anyone trains


def random_seed(text):
    """A random seed's type: an integer from 0 to 2**32 - 1."""
    return checked_seed(integer(text))


def checked_seed(value):
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_LIMIT - 1}, got {value}")
    return value


def parse_epoch_list(text, option):
    try:
        epochs = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got '{text}'") from None
    if any(e < 0 for e in epochs):  # an epoch before the first would silently divide the rate from the start
        raise ValueError(f"{option} must be epochs >= 0, got '{text}'")
    return epochs
