"""Ray token authentication: always on, and the token file private to its owner.

Ray reads its token from ``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``, and writes a missing default file with the process umask (0644 with the
usual 022): any local user could read it and control the instance. mixpipe writes that file itself
(0600) before Ray would, and tightens a token file of its owner that others can read.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path

from pipelines.errors import ClusterError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def ensure_token_auth(joining: bool) -> None:
    """Refuse to run Ray without token authentication.

    A new local instance gets token auth from Ray itself when ``RAY_AUTH_MODE`` is unset. Joining a
    cluster needs the mode set explicitly; if Ray is already imported its cached config must be
    refreshed too, which Ray's own helper does.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        raise ClusterError(
            f"{AUTH_MODE_ENV}={mode}: mixpipe runs Ray with token authentication only; unset it or set it to 'token'"
        )
    if mode is None and joining:
        if "ray" in sys.modules:
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        else:
            os.environ[AUTH_MODE_ENV] = "token"


def token_path() -> Path | None:
    """The token file Ray will read, or None when the token comes from ``RAY_AUTH_TOKEN``."""
    if os.environ.get(TOKEN_ENV):
        return None
    return Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def ensure_private_token(create: bool) -> Path | None:
    """Make sure only its owner can read the token file Ray will use.

    With ``create`` (a new local instance), a missing default file is created with a fresh token,
    mode 0600 (its folder 0700 when created here); joining a cluster needs that cluster's token, so
    nothing is made up then. An existing file of this user that others can read is narrowed to
    0600, with a note on stderr.

    Returns:
        The token file, or None when the token is given in ``RAY_AUTH_TOKEN``.

    Raises:
        ClusterError: the file belongs to someone else and others can read it.
    """
    path = token_path()
    if path is None:
        return None
    if not path.exists():
        if not create:
            return path  # Ray reports the missing token in its own words
        if os.environ.get(TOKEN_PATH_ENV):
            raise ClusterError(f"{TOKEN_PATH_ENV}={path}: no such token file")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process wrote it between the check and here; checked below
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        if info.st_uid != os.getuid():
            raise ClusterError(f"{path}: the Ray token file belongs to uid {info.st_uid} and others can read it")
        path.chmod(0o600)
        print(f"mixpipe: {path} was readable by other users; it is now 0600", file=sys.stderr)
    return path
