"""Shared test set-up.

Ray token authentication stays on: a session-wide token file is made here and pointed to by
``RAY_AUTH_TOKEN_PATH`` before anything imports Ray, so tests never touch ``~/.ray``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    token_dir = Path(tempfile.mkdtemp(prefix="mixpipe-test-token-"))
    token = token_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # the mixing kernels are built once per session into a private cache (stages and Ray workers
    # inherit it); test_mixing_kernels.py checks them against the eager PyTorch ops
    os.environ["MIXPIPE_CACHE"] = tempfile.mkdtemp(prefix="mixpipe-test-cache-")
    os.environ.pop("MIXPIPE_FUSE", None)


@pytest.fixture
def repo_root() -> Path:
    return REPO
