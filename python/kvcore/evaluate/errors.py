"""Errors that ``kvcore eval`` reports to the user as one clear line (no traceback)."""


class EvalError(Exception):
    """Base class: a problem with the user's input or setup, not a bug in kvcore."""


class ModelPathError(EvalError):
    """``--model`` is not a Hugging Face model folder or a GGUF file, or the embedded model is missing."""


class TextFileError(EvalError):
    """``--text`` is missing, unreadable, or too short for the requested lengths."""


class UnknownMethodError(EvalError):
    """A name in ``--methods`` is not a known compression method."""


class DeviceError(EvalError):
    """``--device`` names no device, or one this machine does not have."""
