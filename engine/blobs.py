"""Image and adapter bytes, kept by what they are: put bytes in, get a key back; the key gets
the same bytes out, on any machine that has the blob.

Messages between the bot and an engine carry keys, never paths, so an engine on another
machine needs only the blobs (a transport carries the bytes), not the bot's disk. This folder
is the one implementation today: the bot and its own engine process share it.

Standard library only: the bot process loads it and must never import torch.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

# A key is the SHA-256 of the bytes and what kind of file they are (".png"): it names a file
# inside the store and nothing else, so a key from a message can never reach outside it.
_KEY = re.compile(r"[0-9a-f]{64}(\.[a-z0-9]{1,16})?")


class BlobMissing(KeyError):
    """No blob has this key here."""


class Blobs(Protocol):
    def put(self, data: bytes, suffix: str = "") -> str: ...

    def get(self, key: str) -> bytes: ...

    def has(self, key: str) -> bool: ...


def key_of(data: bytes, suffix: str = "") -> str:
    if suffix and not re.fullmatch(r"\.[a-z0-9]{1,16}", suffix):
        raise ValueError(f"a blob's suffix is a dot and up to 16 letters or digits: {suffix!r}")
    return hashlib.sha256(data).hexdigest() + suffix


def suffix_of(key: str) -> str:
    """What kind of file a key names (".png"), as given to `put`."""
    return key[64:]


def is_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


class LocalBlobs:
    """Blobs as files under one folder, `ab/abcd….png`, written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes, suffix: str = "") -> str:
        key = key_of(data, suffix)
        path = self.path(key)
        if path.is_file():
            return key  # the same bytes are there already
        path.parent.mkdir(parents=True, exist_ok=True)
        # A crash never leaves half a blob under its key: write aside, then rename.
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(key) from None

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def path(self, key: str) -> Path:
        """Where the blob lies (for libraries that open files themselves)."""
        if not is_key(key):
            raise BlobMissing(f"not a blob key: {key[:80]!r}")
        return self.root / key[:2] / key
