"""What a stage prints: its own progress lines, and none of Ray's known-harmless noise unless asked.

Quiet by default (each is harmless here, and each was read as a failure by users):

* ``Token authentication is enabled for this Ray cluster``: printed by every ``ray.init``; token
  authentication is on on purpose (DESIGN.md, "Local and cluster execution").
* Ray Tune's new output engine prints an experiment box, the experiment path and a TensorBoard hint
  at every Tuner start, even at ``verbose=0``; the legacy engine at ``verbose=0`` prints nothing,
  and the sweep prints its own one line per trial change instead.

``--verbose`` / ``MIXPIPE_VERBOSE=1`` or ``MIXPIPE_LOG_LEVEL=<level>`` (``debug``, ``info``, ``warning``, ...)
bring them back; the level is then also Ray's Python log level.
"""

from __future__ import annotations

import logging
import os

from pipelines.errors import ConfigError

LOG_LEVEL_ENV = "MIXPIPE_LOG_LEVEL"
KNOWN_HARMLESS_LOGGERS = ("ray._private.authentication.authentication_token_setup",)
_LEVELS = ("critical", "error", "warning", "info", "debug")


def configure_console(verbose: bool) -> None:
    """Quiet Ray's known-harmless output unless ``verbose`` or ``MIXPIPE_LOG_LEVEL`` asks for it.

    Raises:
        ConfigError: ``MIXPIPE_LOG_LEVEL`` is not a log level.
    """
    level = os.environ.get(LOG_LEVEL_ENV, "").strip().lower()
    if level and level not in _LEVELS:
        raise ConfigError(f"{LOG_LEVEL_ENV} must be one of {', '.join(_LEVELS)}, got {level!r}")
    if level:
        logging.getLogger("ray").setLevel(level.upper())
    if verbose or level:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in KNOWN_HARMLESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
