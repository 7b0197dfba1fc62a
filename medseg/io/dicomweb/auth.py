"""Credentials for DICOMweb servers: HTTP basic or a bearer token, from the environment or a file.

Read, in this order:

* ``MEDSEG_DICOMWEB_TOKEN``: a bearer token (``Authorization: Bearer ...``);
* ``MEDSEG_DICOMWEB_USER`` and ``MEDSEG_DICOMWEB_PASSWORD``: HTTP basic authentication;
* ``MEDSEG_DICOMWEB_CREDENTIALS``: the path of a JSON file holding ``{"token": "..."}`` or
  ``{"user": "...", "password": "..."}`` (keep it readable by its owner only).

Nothing set: requests go without credentials. The secret lives only in the ``requests``
session; it is never part of a ``repr``, a log line, an error message, a report or a
provenance record (messages say where the credentials came from, and the user name).
Workers on other machines (Ray) read the same variables on their own node.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError

ENV_TOKEN = "MEDSEG_DICOMWEB_TOKEN"
ENV_USER = "MEDSEG_DICOMWEB_USER"
ENV_PASSWORD = "MEDSEG_DICOMWEB_PASSWORD"
ENV_FILE = "MEDSEG_DICOMWEB_CREDENTIALS"
WHERE = f"{ENV_USER} and {ENV_PASSWORD}, {ENV_TOKEN}, or a JSON file named by {ENV_FILE}"
_FORM = '{"user": ..., "password": ...} or {"token": ...}'


@dataclass(frozen=True)
class Credentials:
    """A user and password, or a token (or nothing: anonymous); ``source`` says where they came from."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "none set"

    @property
    def given(self) -> bool:
        return bool(self.token) or self.user is not None

    def describe(self) -> str:
        """For messages: the kind, the user name and the source; never the secret."""
        if self.token:
            return f"a bearer token from {self.source}"
        if self.user is not None:
            return f"user {self.user!r} from {self.source}"
        return "no credentials"

    def apply(self, session) -> None:
        """Authenticate every request of a ``requests.Session``."""
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user is not None:
            session.auth = (self.user, self.password or "")


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials the environment names (see the module docstring); ``ConfigError`` for a
    half-given pair or an unreadable file, naming the variable or the file, never a secret."""
    env = os.environ if environ is None else environ
    if env.get(ENV_TOKEN):
        return Credentials(token=env[ENV_TOKEN], source=ENV_TOKEN)
    user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user or password:
        if not (user and password):
            missing = ENV_PASSWORD if user else ENV_USER
            raise ConfigError(f"{missing} is not set: HTTP basic authentication needs both {ENV_USER} and "
                              f"{ENV_PASSWORD}")
        return Credentials(user=user, password=password, source=f"{ENV_USER} / {ENV_PASSWORD}")
    if env.get(ENV_FILE):
        return _from_file(Path(env[ENV_FILE]).expanduser())
    return Credentials()


def _from_file(path: Path) -> Credentials:
    where = f"{ENV_FILE} file {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # the error text could quote the secret
        raise ConfigError(f"{where}: not a readable JSON file; write {_FORM}") from None
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):  # a warning, so said once, not per request
        warnings.warn(f"{where} can be read by other users; chmod 600 it", stacklevel=2)
    if isinstance(data, dict) and isinstance(data.get("token"), str) and data["token"]:
        return Credentials(token=data["token"], source=where)
    if isinstance(data, dict) and all(isinstance(data.get(k), str) and data[k] for k in ("user", "password")):
        return Credentials(user=data["user"], password=data["password"], source=where)
    raise ConfigError(f"{where}: expected {_FORM} (non-empty strings)")
