"""Files and buffers handed to Arrow as memory Arrow owns.

Arrow's reader threads must never hold a Python object: one released on such a thread as
the interpreter exits takes the GIL there and aborts the process ("terminate called
without an active exception", exit -6), at random, after the command's work is done.
"""

from __future__ import annotations

import os
from typing import Any


def arrow_file(fd: int) -> Any:
    """The file open at ``fd`` (opened inside the store without following links) as a file
    Arrow reads itself, not through a Python file object: reopened through /proc/self/fd,
    the same file (checked), not a path looked up again. A Python file object where there
    is no /proc."""
    import pyarrow as pa

    try:
        native = pa.OSFile(f"/proc/self/fd/{fd}", "r")
    except (OSError, pa.ArrowException):
        return os.fdopen(fd, "rb")
    try:
        if not os.path.samestat(os.fstat(native.fileno()), os.fstat(fd)):
            raise OSError(f"/proc/self/fd/{fd} is not the file opened")
    except BaseException:
        native.close()
        os.close(fd)
        raise
    os.close(fd)
    return native


def arrow_copy(block: bytes | memoryview) -> Any:
    """``block`` copied into memory Arrow owns, for the JSON reader, which reads ahead on
    Arrow's IO threads (~2 ms per 8 MiB manifest slice)."""
    import pyarrow as pa

    copy = pa.allocate_buffer(len(block))
    if len(block):
        memoryview(copy).cast("B")[:] = block
    return copy
