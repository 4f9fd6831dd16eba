"""One exception type per area. Each message is one line naming the file (and line) or the graph node, and
what was expected; the CLI prints it in red and exits with code 2, without a traceback.

one_line() is the single way to quote a library's exception inside such a message.
"""
from __future__ import annotations

import re


class PfpldError(Exception):
    """Base of every user-facing error."""


class DatasetError(PfpldError, ValueError):
    """A dataset file is not what its format promises."""


class CheckpointError(PfpldError, ValueError):
    """A checkpoint file is missing, not ours, or does not fit the model."""


class ContractError(PfpldError, ValueError):
    """A preprocessing contract or a face box is invalid."""


class ModelError(PfpldError, ValueError):
    """A model name (an option, or the spec in a checkpoint) that the model registry does not know."""


class InputError(PfpldError, ValueError):
    """A command-line input (image, box, option) is invalid."""


class ConversionError(PfpldError, ValueError):
    """A model file cannot be converted exactly (unreadable file, unsupported op or attribute, a shape the
    target would compute differently); the message names the file or the graph node."""


# Library text that says nothing about the user's file: onnxruntime's status prefix and C++ source locations
# (with the function signature after them), torch's lead-in before the real unpickler error, and advice
# addressed to the library's own users ("Please file an issue ...").
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE_LOCATION = re.compile(r"(?:\b[A-Za-z]:)?[\w./\\-]+\.(?:cc|cpp|cxx|c|h|hpp):\d+\s+"
                              r"(?:(?:[\w:<>*&]+\s+){0,3}[\w:<>~]*::~?\w+\([^()]*\)\s*(?:const\s*)?)?")
_ESSENTIAL_FROM = ("WeightsUnpickler error:",)
_SENTENCE_END = r"(?:[.:!](?=\s|$)|$)"
_BOILERPLATE = [re.compile(p + _SENTENCE_END) for p in (
    r"Please (?:file|open|submit|create|report)\b.*?",
    r"Please feel free to request support\b.*?",
    r"Please fix either the inputs/outputs or the model",
    r"Please use `torch\.serialization\.\S+.*?",
    r"Check the documentation of \S+ to learn more\b.*?",
    r"This is an internal \w+ error",
    r"If you are seeing this error, there is a high likelihood\b.*?",
    r"This can happen if the checkpoint was not saved properly\b.*?",
)]


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's exception as at most `limit` characters on one line, for a message of ours: whitespace
    collapsed, the type name when there is no message, library boilerplate dropped, an ellipsis when cut."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]                    # str(KeyError) would quote it
    else:
        text = str(exc)
    text = _ANSI.sub("", text)
    for marker in _ESSENTIAL_FROM:
        if marker in text:
            text = text[text.index(marker):]
    text = _SOURCE_LOCATION.sub(" ", _ORT_STATUS.sub("", text))
    text = " ".join(text.split())
    for pattern in _BOILERPLATE:
        text = pattern.sub("", text)
    text = " ".join(text.split()).strip(" :;,")
    if not text:
        return type(exc).__name__
    if len(text) > limit:
        text = text[:max(0, limit - 3)].rstrip() + "..."
    return text
