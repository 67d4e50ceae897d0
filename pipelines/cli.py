"""The ``mixpipe`` command: submit jobs, run a local multi-node cluster, compare experiments, run a stage.

    mixpipe submit [--address URL] [--job-id ID] [--no-wait] -- COMMAND...
    mixpipe cluster start|stop|status|env --state-dir DIR [...]
    mixpipe compare [REV ...] [--table evaluation] [--metric accuracy]
    mixpipe stage NAME [ARGS...]

Errors the user can fix print one line and exit 2; a failed job exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path

from pipelines.errors import MixpipeError
from pipelines.urls import redact


def _submit(args: argparse.Namespace) -> int:
    from pipelines.cluster import submit_job

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise MixpipeError("submit: give the command to run after --, e.g. mixpipe submit -- python -m stages.train")
    outcome = submit_job(
        shlex.join(command), args.address, str(Path(args.working_dir).resolve()), job_id=args.job_id, wait=not args.no_wait
    )
    print(f"mixpipe submit: job {outcome.submission_id} {outcome.status} after {outcome.seconds:.1f}s", file=sys.stderr)
    if args.no_wait:
        return 0
    return 0 if outcome.succeeded else 1


def _cluster(args: argparse.Namespace) -> int:
    from pipelines.cluster import launcher

    if args.action == "start":
        info = launcher.start(args.state_dir, args.workers, args.cpus_per_node, args.base_port)
        print(f"started {len(info.nodes)} node(s): {info.address}, dashboard {info.dashboard_url}")
        print(f'to join: eval "$(mixpipe cluster env --state-dir {args.state_dir})"')
    elif args.action == "stop":
        pids = launcher.stop(args.state_dir)
        print(f"stopped {len(pids)} node process(es): {' '.join(map(str, pids)) or '-'}")
    elif args.action == "status":
        info = launcher.load(args.state_dir)
        for node in info.nodes:
            state = "alive" if launcher.is_alive(node.pid) else "gone"
            print(f"{node.name:8s} pid {node.pid:7d} {state:5s} log {node.log}")
    else:
        info = launcher.load(args.state_dir)
        for key, value in info.env().items():
            print(f"export {key}={shlex.quote(value)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pipelines.experiments import compare_table

    frame = compare_table(args.revs or ["workspace"], args.table, args.metric, args.path)
    if args.json:
        print(json.dumps(json.loads(frame.to_json(orient="index")), indent=2))
    else:
        print(frame.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def _stage(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(f"stages.{args.name}")
    except ModuleNotFoundError:
        raise MixpipeError(f"stage: no stage called {args.name!r}") from None
    sys.argv = [f"stages.{args.name}", *args.args]
    module.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixpipe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="verb", required=True)

    submit = commands.add_parser("submit", help="run a command as a Ray job (code shipped as working_dir)")
    submit.add_argument("--address", help="Ray dashboard URL or cluster address (default: $RAY_ADDRESS)")
    submit.add_argument("--job-id", help="submission id; an existing job with it is followed, not resubmitted")
    submit.add_argument("--working-dir", default=".", help="code to upload (default: this directory)")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting")
    submit.add_argument("command", nargs=argparse.REMAINDER)
    submit.set_defaults(run=_submit)

    cluster = commands.add_parser("cluster", help="a multi-node Ray cluster on this host")
    cluster.add_argument("action", choices=["start", "stop", "status", "env"])
    cluster.add_argument("--state-dir", default=".mixpipe/cluster")
    cluster.add_argument("--workers", type=int, default=1, help="worker nodes besides the head")
    cluster.add_argument("--cpus-per-node", type=float, default=1)
    cluster.add_argument("--base-port", type=int, default=46300)
    cluster.set_defaults(run=_cluster)

    compare = commands.add_parser("compare", help="a result table's metric across experiments")
    compare.add_argument("revs", nargs="*", help="git revisions or experiment names ('workspace' for files here)")
    compare.add_argument("--table", default="evaluation", help="result table (evaluation, merges, trials)")
    compare.add_argument("--metric", default="accuracy")
    compare.add_argument("--path", help="the table's file (default: results/<table>.parquet)")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(run=_compare)

    stage = commands.add_parser("stage", help="run one pipeline stage (as dvc.yaml does)")
    stage.add_argument("name")
    stage.add_argument("args", nargs=argparse.REMAINDER)
    stage.set_defaults(run=_stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MixpipeError as error:
        print(redact(f"mixpipe {args.verb}: error: {error}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
