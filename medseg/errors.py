"""The one exception family of medseg.

Every message names the file or field at fault and says what to do about it.
"""


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError):
    """A file or array given by the user cannot be used as it is (missing, corrupt, mismatched)."""


class GeometryError(InputError):
    """Two things that must share a voxel grid (image and labels, volume and prompts) do not."""


class ConfigError(MedsegError):
    """A manifest, pipeline YAML or option has a bad field."""


class WeightsError(MedsegError):
    """A model checkpoint is missing, fails verification or does not fit the architecture."""


class ServerError(MedsegError):
    """A server (a PACS over DICOMweb) refused a request: credentials, permissions, a bad answer.

    Messages name the server's address and never the credentials.
    """


class ServerUnreachable(ServerError):
    """A server did not answer (refused connection, timeout, 5xx): a later try may succeed."""


class Cancelled(Exception):
    """A long call stopped because its ``should_stop()`` said so (see ``medseg.runtime``).

    Not a ``MedsegError``: nothing is wrong. The call left nothing half-done before raising.
    """


class OutputError(MedsegError):
    """An output path cannot be written: it is an input of the same call, or the file system refuses it."""


def user_message(error: BaseException) -> str:
    """The one-line message users see for ``error`` (CLI, pipeline records, napari).

    A ``MedsegError`` says it all already; an ``OSError`` is named by its file and reason
    (``[Errno 20] Not a directory: 'x'`` becomes ``x: not a directory``); anything else is a bug
    and keeps its type.
    """
    if isinstance(error, MedsegError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else "a file"
        return f"{where}: {error.strerror[:1].lower()}{error.strerror[1:]}"
    return f"{type(error).__name__}: {error}"


def syntax_error(path: object, error: Exception) -> ConfigError:
    """A YAML or JSON syntax error as ``file:line:column: reason`` (one line, no parser context).

    ``error`` is a ``json.JSONDecodeError`` or a PyYAML ``MarkedYAMLError``; lines and
    columns are 1-based, as editors count them.
    """
    line = getattr(error, "lineno", None)
    column = getattr(error, "colno", None)
    reason = getattr(error, "msg", None)
    mark = getattr(error, "problem_mark", None)
    if mark is not None:  # PyYAML
        line, column = mark.line + 1, mark.column + 1
        reason = " ".join(part for part in (getattr(error, "problem", None), getattr(error, "context", None)) if part)
    where = f"{path}:{line}:{column}" if line is not None else str(path)
    kind = "YAML" if mark is not None or "yaml" in type(error).__module__ else "JSON"
    return ConfigError(f"{where}: {kind} syntax error: {reason or str(error).splitlines()[0]}")
