"""The `mergeflow` command: one verb per pipeline stage, each callable without Snakemake."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mergeflow.commands import adaptive, data, evaluation, merging, models, report, statistics
from mergeflow.io import InputError

log = logging.getLogger("mergeflow")

# In `mergeflow --help` order: the stages as the workflow runs them, then the merge tool and the report.
VERB_MODULES = (data, models, statistics, evaluation, adaptive, merging, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in VERB_MODULES:
        module.register(sub)
    return parser


def _log_job_context() -> None:
    """Where this job runs, in its log: the host and, under a scheduler, the SLURM job."""
    import os
    import socket

    from mergeflow.runtime.process import forked_by_server

    slurm_job = os.environ.get("SLURM_JOB_ID")
    server = forked_by_server()
    if slurm_job:
        log.info("host %s, SLURM_JOB_ID=%s", socket.gethostname(), slurm_job)
    elif server is not None:
        log.info(
            "host %s, forked by the mergeflow job server as pid %d (server pid %d)",
            socket.gethostname(),
            os.getpid(),
            server,
        )
    else:
        log.info("host %s", socket.gethostname())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _log_job_context()
    try:
        return int(args.func(args))
    except InputError as err:
        log.error("%s", err)
        return 2


def run() -> int:
    """`main` in a process of its own (the console command runs this when no job server takes the job).

    open_clip imports transformers (over a second of every job's start) only for Hugging Face text towers,
    which mergeflow never builds (`mergeflow.models.clip.build_clip` refuses such configs), and no mergeflow code
    imports it; a command process is spared that import. `main` itself leaves the interpreter alone, as
    tests call it in a process that does use transformers.
    """
    sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]
    return main()


if __name__ == "__main__":
    sys.exit(run())
