"""The tierflow exception hierarchy.

Every error tierflow raises is a :class:`TierflowError`. Each specific class also subclasses the
built-in exception a caller would naturally catch, so ``except KeyError`` still works for an
unknown tensor name and ``except OSError`` for a corrupt file.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "CapacityError",
    "ClosedError",
    "CorruptFileError",
    "DTypeError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidNameError",
    "MissingFileError",
    "ScheduleError",
    "ShapeError",
    "StorageError",
    "TensorExistsError",
    "TensorNotFoundError",
    "TierflowError",
]


class TierflowError(Exception):
    """Base class of every tierflow error."""


class InvalidArgumentError(TierflowError, ValueError):
    """An argument with a bad value (a negative capacity, an unknown policy, ...)."""


class CapacityError(TierflowError, MemoryError):
    """A tensor that does not fit in a tier, or a tier that cannot make room."""


class TensorNotFoundError(TierflowError, KeyError):
    """No tensor of that name."""

    name: str | None = None

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TensorExistsError(TierflowError, ValueError):
    """A put over an existing name without ``overwrite=True``; the old tensor is untouched."""

    name: str | None = None


class InvalidNameError(TierflowError, ValueError):
    """A tensor name that is empty, holds NUL, or would leave the store's folder."""

    name: str | None = None


class DTypeError(TierflowError, TypeError):
    """An unsupported or mismatched dtype."""


class ShapeError(TierflowError, ValueError):
    """Mismatched or invalid shapes (names both shapes)."""


class StorageError(TierflowError, OSError):
    """An operating-system I/O error (full disk, ...), naming the path."""


class MissingFileError(StorageError, FileNotFoundError):
    """A file or folder that does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """A file or folder that may not be read or written."""


class CorruptFileError(TierflowError, OSError):
    """A file whose contents are not what they claim: truncated, bad header, checksum mismatch.

    ``path`` names the file and ``tensor`` the tensor, when known.
    """

    path: str | None = None
    tensor: str | None = None

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ScheduleError(TierflowError, ValueError):
    """A plan that cannot be made: a CoE that does not fit a device (says how much is missing)."""


class ClosedError(TierflowError, RuntimeError):
    """An operation on a closed store or handle."""


class InternalError(TierflowError, RuntimeError):
    """A bug in tierflow (an invariant that failed, or a caught panic). Please report it."""
