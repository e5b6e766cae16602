"""The one way this project reads a pickle: only the globals its caller allows, within the bytes it holds.

A pickle can name any importable callable and call it with any arguments, so plain `pickle.load`
of a crafted checkpoint, weight or verification file runs code. `RestrictedUnpickler` resolves
only the (module, name) pairs its caller lists and refuses every other name before anything
is called; a pickle naming none (a header, a list of keys) gets an empty list. It reads an
in-memory stream and, before unpickling, checks what the pickle claims against what it holds:
the unpickler allocates a claimed length before reading it, and memo room up to any index a
PUT names, so a few crafted bytes could otherwise take gigabytes.
"""
import io
import pickle
import pickletools

# What a malformed or refused pickle raises while it is checked or read.
LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
               OverflowError, RecursionError)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles one object from `stream` (an io.BytesIO), resolving only `allowed` {(module, name): object}.

    `holder` says which file it reads, for the refusal: "it names os.system, which <holder> never holds".
    """

    def __init__(self, stream, allowed, holder, **kwargs):
        if not isinstance(stream, io.BytesIO):
            raise TypeError("RestrictedUnpickler reads an io.BytesIO (whose claims it checks before unpickling)")
        super().__init__(stream, **kwargs)
        self.stream, self.allowed, self.holder = stream, allowed, holder

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which {self.holder} never holds; refused, "
                                         "as loading it could run code")
        return self.allowed[(module, name)]

    def load(self):
        check_claims(self.stream)
        return super().load()


MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def check_claims(stream):
    """Walk the next pickle in `stream` without building anything, then rewind.

    ValueError for a length that runs past the end of the stream (pickletools reads an io.BytesIO's
    bytes only as far as they go), a memo index beyond the number of opcodes before it (a pickler
    numbers its memo entries 0, 1, 2, ... as it writes them), an unknown opcode or a missing STOP.
    """
    start = stream.tell()
    for count, (opcode, arg, position) in enumerate(pickletools.genops(stream)):
        if opcode.name in MEMO_PUTS and arg > count:
            raise ValueError(f"at position {position}, memo index {arg} after {count} opcodes")
    stream.seek(start)
