"""The ``mixpipe`` command: submit jobs, run a local multi-node cluster, compare experiments, show plots, run a stage.

    mixpipe submit [--address URL] [--job-id ID] [--gpus N] [--env NAME] [--metadata K=V] [--no-wait] -- COMMAND...
    mixpipe cluster start|stop|status|env --state-dir DIR [...]
    mixpipe compare [REV ...] [--table evaluation] [--metric accuracy]
    mixpipe plots [-o DIR] [TARGET ...]
    mixpipe stage NAME [ARGS...]
    mixpipe rayjob STAGE [--cluster NAME] [--ttl SECONDS] [-o FILE]

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

MODES = """where the Ray stages (augment, train, tune, merge with a search) run, by RAY_ADDRESS or ray.address:
  (none)               a local Ray instance on this machine, loopback only
  host:port | auto     join that cluster's GCS as a driver: only on a cluster node, run state in storage.shared_uri
  http(s)://host:8265  job mode: each stage is a Ray job; inputs and outputs travel through storage.shared_uri
  ray://...            refused: Ray Client cannot drive Ray Train or Tune; use the http:// dashboard address"""


def _submit(args: argparse.Namespace) -> int:
    from pipelines.cluster.jobs import forwarded_env, metadata_pairs, submit_job

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise MixpipeError("submit: give the command to run after --, e.g. mixpipe submit -- python -m stages.train")
    outcome = submit_job(
        shlex.join(command), args.address, str(Path(args.working_dir).resolve()), job_id=args.job_id,
        wait=not args.no_wait, env_vars=forwarded_env(args.env), metadata=metadata_pairs(args.metadata),
        num_gpus=args.gpus, connect_timeout_s=args.connect_timeout,
    )
    print(f"mixpipe submit: job {outcome.submission_id} {outcome.status} after {outcome.seconds:.1f}s", file=sys.stderr)
    if args.no_wait:
        return 0
    return 0 if outcome.succeeded else 1


def _cluster(args: argparse.Namespace) -> int:
    from pipelines.cluster import launcher

    if args.action == "start":
        info = launcher.start(args.state_dir, args.workers, args.cpus_per_node, args.base_port, hide=args.hide)
        print(f"started {len(info.nodes)} node(s): {info.address}, dashboard {info.dashboard_url}")
        print(f'to run stages as jobs: eval "$(mixpipe cluster env --jobs --state-dir {args.state_dir})"')
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
        for key, value in info.env(jobs=args.jobs).items():
            print(f"export {key}={shlex.quote(value)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pipelines.experiments import compare_table, format_comparison

    revs = args.revs or ["workspace"]
    frame = compare_table(revs, args.table, args.metric, args.path)
    if args.json:
        print(json.dumps(json.loads(frame.to_json(orient="index")), indent=2))
    else:
        print(format_comparison(frame, revs))
    return 0


def _plots(args: argparse.Namespace) -> int:
    from pipelines.offline_plots import show

    print(f"mixpipe plots: {show(args.out, args.targets)}")
    return 0


def _stage(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(f"stages.{args.name}")
    except ModuleNotFoundError:
        raise MixpipeError(f"stage: no stage called {args.name!r}") from None
    sys.argv = [f"stages.{args.name}", *args.args]
    module.main()
    return 0


def _rayjob(args: argparse.Namespace) -> int:
    import yaml

    from pipelines.cluster.rayjob import TEMPLATE, rayjob_manifest
    from pipelines.cluster.stage_io import find_stage
    from stages.common import DVC_FILE, CODE_ROOT, job_request, params

    if args.ttl is not None and args.ttl < 0:
        raise MixpipeError(f"rayjob: --ttl {args.ttl}: seconds after the job ends, 0 or more")
    p = params()
    io = find_stage(DVC_FILE, p.model_dump(mode="json"), [], args.stage)
    root = Path.cwd()
    template = yaml.safe_load((CODE_ROOT / TEMPLATE).read_text())
    document = rayjob_manifest(job_request(p, io, "a RayJob"), root, template, args.cluster, args.ttl)
    class Literal(yaml.SafeDumper):  # the runtime env, a YAML text inside the YAML, as a readable block
        pass

    Literal.add_representer(str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))
    text = yaml.dump(document, Dumper=Literal, sort_keys=False, width=1000)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    where = "stdout" if args.out == "-" else args.out
    print(f"mixpipe rayjob: {document['metadata']['name']} (job id {document['spec']['jobId']}) to {where}; "
          f"inputs and code are in {p.storage.shared_uri}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixpipe", description=__doc__.split("\n\n")[0], epilog=MODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="verb", required=True)

    submit = commands.add_parser(
        "submit", help="run a command as a Ray job (code shipped as working_dir)",
        description="Run a command as a Ray job on the cluster whose dashboard is at --address (http://<head>:8265). "
                    "The job gets this directory's code (not data/, models/, results/) and writes nowhere here: "
                    "for pipeline stages use job mode (ray.address: http://..., see the README).")
    submit.add_argument("--address", help="Ray dashboard URL http://<head>:8265 (default: $RAY_ADDRESS; a given one wins)")
    submit.add_argument("--job-id", help="submission id: a pending or running job with it is followed, a succeeded one "
                                         "reported, a failed or stopped one submitted again as <id>-a2, -a3...")
    submit.add_argument("--working-dir", default=".", help="code to upload (default: this directory)")
    submit.add_argument("--gpus", type=float, default=0, help="GPUs reserved for the job's driver (default 0)")
    submit.add_argument("--env", action="append", default=[], metavar="NAME",
                        help="forward this environment variable's value to the job (repeatable; no credentials)")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="job metadata shown by the Jobs API (repeatable)")
    submit.add_argument("--connect-timeout", type=float, default=30, help="seconds the dashboard may take to answer")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting")
    submit.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command the job runs")
    submit.set_defaults(run=_submit)

    cluster = commands.add_parser("cluster", help="a multi-node Ray cluster on this host",
                                  description="Start, stop or inspect a Ray cluster of several nodes on this host "
                                              "(loopback only, token authentication on), for trying cluster and job mode.")
    cluster.add_argument("action", choices=["start", "stop", "status", "env"],
                         help="start the nodes; stop them (by their PIDs); status of each; env: the variables that point "
                              "stages at the cluster")
    cluster.add_argument("--state-dir", default=".mixpipe/cluster",
                         help="where the cluster's PIDs, logs and addresses are kept (default: .mixpipe/cluster)")
    cluster.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    cluster.add_argument("--cpus-per-node", type=float, default=1, help="CPUs each node offers to Ray (default 1)")
    cluster.add_argument("--base-port", type=int, default=46300,
                         help="first of the ports the nodes listen on, on 127.0.0.1 (default 46300)")
    cluster.add_argument("--hide", action="append", default=[], metavar="DIR",
                         help="start: run the nodes where DIR is an empty folder (needs root; e.g. your workspace, "
                              "to check that jobs need nothing from it)")
    cluster.add_argument("--jobs", action="store_true", help="env: the dashboard address (job mode), not the GCS one")
    cluster.set_defaults(run=_cluster)

    compare = commands.add_parser(
        "compare", help="a result table's metric across experiments, with 95%% intervals",
        description="A metric of a result table at each revision, with its 95% interval, and the differences to the "
                    "first revision; '*' marks those whose intervals do not overlap (larger than the noise). Tables are "
                    "read from the DVC cache, then the default remote; when neither has them the error says which "
                    "command brings them.")
    compare.add_argument("revs", nargs="*", help="git revisions or experiment names ('workspace' for files here; default)")
    compare.add_argument("--table", default="evaluation",
                         help="result table: evaluation (default), merges, trials or train_history")
    compare.add_argument("--metric", default="accuracy",
                         help="its column, e.g. accuracy, nll, ece (evaluation), test_accuracy (merges), val_accuracy "
                              "(trials); default accuracy")
    compare.add_argument("--path", help="the table's file (default: <paths.results>/<table>.parquet, as params.yaml has it at each revision)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON (values, intervals, differences)")
    compare.set_defaults(run=_compare)

    plots = commands.add_parser(
        "plots", help="dvc plots show, rendered without a network",
        description="Run `dvc plots show` with a page that loads Vega, Vega-Lite and Vega-Embed from beside itself "
                    "(fetched once from the npm registry at pinned versions, checked against their sha512 integrity, "
                    "kept in .mixpipe/vega/), so the page opens offline.")
    plots.add_argument("-o", "--out", default="dvc_plots", help="folder for index.html and its scripts (default dvc_plots)")
    plots.add_argument("targets", nargs="*", help="plots or files to show (default: every plot of dvc.yaml)")
    plots.set_defaults(run=_plots)

    stage = commands.add_parser("stage", help="run one pipeline stage (as dvc.yaml does)",
                                description="Run one stage as `python -m stages.<name>` would, without DVC's "
                                            "bookkeeping. --verbose (or MIXPIPE_VERBOSE=1) prints full tracebacks and "
                                            "Ray's own messages; MIXPIPE_LOG_LEVEL=<level> sets Ray's log level.")
    stage.add_argument("name", help="validate, prepare, augment, train, tune, merge, evaluate or report")
    stage.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments (augment: the method)")
    stage.set_defaults(run=_stage)

    rayjob = commands.add_parser(
        "rayjob", help="a stage as a KubeRay RayJob manifest, its inputs staged",
        description="Stage one stage's inputs and this checkout's code in storage.shared_uri, as job mode does, and "
                    "write a RayJob (cluster/kuberay/rayjob.yaml filled in) that runs it on a running RayCluster. Its "
                    "job id is job mode's, so `RAY_ADDRESS=http://<head>:8265 dvc repro` afterwards takes the outputs.")
    rayjob.add_argument("stage", help="the stage's name in dvc.yaml: train, tune, merge, augment@mixup, ...")
    rayjob.add_argument("--cluster", help="the RayCluster to run on (default: the template's, mixpipe)")
    rayjob.add_argument("--ttl", type=int, help="seconds the RayJob object stays after the job ends (default 3600)")
    rayjob.add_argument("-o", "--out", default="-", help="file to write the manifest to (default: stdout)")
    rayjob.set_defaults(run=_rayjob)
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
