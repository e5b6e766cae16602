"""The results.json eval_SFace_jittor.py writes, read back by the tools that take a threshold or an accuracy from it."""
import json
import math

from util.errors import InputError


class ResultsError(InputError):
    """A results.json that cannot be read, or lacks what is asked of it; the message names the file."""


def read_results(path):
    """-> (the checkpoint it evaluated, {target: its row}) of the pair-set results (SCF rows included)."""
    try:
        with open(path) as f:
            results = json.load(f)
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:  # not JSON, or not UTF-8 text
        raise ResultsError(f"{path}: not JSON ({e}); give a results.json of eval_SFace_jittor.py") from None
    try:
        return results["checkpoint"], {row["target"]: row for row in results["results"]}
    except (KeyError, TypeError):
        raise ResultsError(f"{path}: not a results.json of eval_SFace_jittor.py (no 'checkpoint' and 'results' "
                           f"with a 'target' in each row)") from None


def row_number(path, row, key):
    """A finite number in a target's row (accuracy, threshold, ...); a ResultsError naming the file otherwise."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultsError(f"{path}: the results of target '{row['target']}' hold no number '{key}' (found {value!r})")
    return value


def target_row(path, rows, target):
    """The row of `target` among `rows`; a ResultsError naming the targets there otherwise."""
    if target not in rows:
        raise ResultsError(f"{path}: no results for target '{target}'; it has {', '.join(rows) or 'none'}")
    return rows[target]
