r"""The one family of exceptions for expected failures.

Every failure that a user can cause and fix (bad arguments, a wrong or damaged
checkpoint, a data spec that cannot be read, an output folder that cannot be written, an
encoder that is not available offline) raises a subclass of :class:`CaptumUnicamError`.
Its message says what is wrong and how to fix it, in terms of the library's arguments.
The command line turns exactly these into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.

The subclasses also derive from the built-in exception that the same failure raised
before (``ValueError``, ``RuntimeError``), so ``except ValueError`` keeps working.

Examples::

    >>> from captum_unicam.errors import CaptumUnicamError, InputError
    >>> try:
    ...     raise InputError("`inputs` holds 3 samples; UniCAM needs at least 5.")
    ... except CaptumUnicamError as err:
    ...     print(err)
    `inputs` holds 3 samples; UniCAM needs at least 5.
"""

from __future__ import annotations

__all__ = [
    "CaptumUnicamError",
    "InputError",
    "CheckpointError",
    "DataSpecError",
    "OutputError",
    "EmbeddingModelError",
    "DeviceError",
]


class CaptumUnicamError(Exception):
    """Base class of every expected failure of captum-unicam."""


class InputError(CaptumUnicamError, ValueError):
    """Bad arguments to a library function: shapes, sample counts, NaN/Inf, targets,
    layers, option values."""


class CheckpointError(CaptumUnicamError, ValueError):
    """A checkpoint file is missing, unreadable, damaged, or holds another model than
    expected."""


class DataSpecError(CaptumUnicamError, ValueError):
    """A data spec cannot be loaded: unknown scheme, missing, unreadable or empty folder,
    absent dataset files."""


class OutputError(CaptumUnicamError, ValueError):
    """An output file or folder cannot be written safely (it exists, is not ours, holds
    files the run reads, or its parent is not writable)."""


class EmbeddingModelError(CaptumUnicamError, RuntimeError):
    """The text encoder for label embeddings could not be found or loaded offline."""


class DeviceError(CaptumUnicamError, ValueError):
    """Models, tensors or a requested device do not fit together (e.g. CUDA asked for
    and not available, models on different devices)."""
