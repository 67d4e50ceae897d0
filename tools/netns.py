"""Run a command in a private network namespace where only loopback exists.

Usage:
    python tools/netns.py -- COMMAND [ARGS...]

Tests and benchmarks that start Ray run this way, so nothing they start can listen beyond
127.0.0.1. Needs ``unshare`` (util-linux) and either root or unprivileged user namespaces.
Loopback is brought up with an ioctl, so iproute2 is not needed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_MARKER = "MIXPIPE_IN_NETNS"


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if os.environ.get(_MARKER) == "1":
        loopback_up()
        os.execvp(argv[0], argv)
    unshare = shutil.which("unshare")
    if unshare is None:
        print("netns: 'unshare' (util-linux) is not installed", file=sys.stderr)
        return 2
    flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    env = {**os.environ, _MARKER: "1"}
    return subprocess.call([unshare, *flags, "--", sys.executable, os.path.abspath(__file__), "--", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
