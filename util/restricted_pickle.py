"""The one way this project reads a pickle: only the globals its caller allows, within the bytes it holds.

A pickle can name any importable callable and call it with any arguments, so plain `pickle.load`
of a crafted checkpoint, weight or verification file runs code. `RestrictedUnpickler` resolves
only the (module, name) pairs its caller lists and refuses every other name before anything
is called; a pickle naming none (a header, a list of keys) gets an empty list. It reads an
in-memory stream and checks every length the pickle claims against what the stream holds
before unpickling, since the unpickler allocates a claimed length before reading it.
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
            raise TypeError("RestrictedUnpickler reads an io.BytesIO (whose lengths it can check)")
        super().__init__(stream, **kwargs)
        self.stream, self.allowed, self.holder = stream, allowed, holder

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which {self.holder} never holds; refused, "
                                         "as loading it could run code")
        return self.allowed[(module, name)]

    def load(self):
        check_lengths(self.stream)
        return super().load()


def check_lengths(stream):
    """Walk the next pickle in `stream` without building anything, then rewind.

    A length that runs past the end of the stream, an unknown opcode or a missing STOP raises
    ValueError (pickletools reads an io.BytesIO's bytes only as far as they go).
    """
    start = stream.tell()
    for _ in pickletools.genops(stream):
        pass
    stream.seek(start)
