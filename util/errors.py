"""The one kind of error a user can act on: bad input (a file, a folder, a flag's value, a device) whose
message names what is wrong, the file and line where there is one. Each layer has its own kind
(DataError, CheckpointError, OutputError, ...); the scripts print any of them as one `error:` line
and exit with status 1, and print a traceback only for what is not one of them (a bug)."""


class InputError(ValueError):
    """Bad input, named in the message."""
