"""Files only their owner may read (the checkpoint key, the local Ray token), created without a race.

:func:`create_private_file` never exposes a partial or world-readable file: the content goes to a private
(``0600``) temporary file in a ``0700`` directory, then a hard link puts it in place, which fails if another
process created the file first — then theirs wins, and both processes read the same secret.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_private_file(path: Path, content: str) -> bool:
    """Create ``path`` holding ``content`` (mode ``0600``, parent ``0700``) unless it exists; True if this call
    created it."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False  # another process created it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)
