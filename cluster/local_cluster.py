"""Start, inspect and stop a multi-node Ray cluster on this host (all nodes on 127.0.0.1).

Usage:
    python cluster/local_cluster.py start  --state-dir .mixpipe/cluster [--workers 1] [--cpus-per-node 1] [--base-port 46300]
    eval "$(python cluster/local_cluster.py env --state-dir .mixpipe/cluster)"   # RAY_ADDRESS, token
    python cluster/local_cluster.py status --state-dir .mixpipe/cluster
    python cluster/local_cluster.py stop   --state-dir .mixpipe/cluster

Same as ``mixpipe cluster ...``.
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
