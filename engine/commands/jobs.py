"""``likeness jobs``, ``likeness cancel ID``, ``likeness resume ID``: the service's queue from the CLI."""

from __future__ import annotations

import argparse

from engine.placement.gpus import GPU_NAMES


def _server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL",
                        help="the likeness service (default $LIKENESS_SERVER, else http://127.0.0.1:8000, else the "
                             "one running on LIKENESS_HOME, such as the engine the TUI started)")


def register(subparsers) -> None:
    p = subparsers.add_parser("jobs", help="list the service's jobs", description="List the jobs of a running "
                              "likeness service, newest first. The token, if the service needs one, comes from "
                              "LIKENESS_TOKEN or LIKENESS_TOKEN_FILE.")
    _server_flag(p)
    p.add_argument("--state", choices=["queued", "running", "done", "failed", "cancelled", "interrupted"],
                   help="only jobs in this state")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p.set_defaults(func=list_jobs)

    p = subparsers.add_parser("cancel", help="cancel a queued or running job",
                              description="A queued job is cancelled at once; a running one stops at its next "
                                          "step boundary and keeps its last checkpoint.")
    p.add_argument("job_id", type=int, metavar="ID")
    _server_flag(p)
    p.set_defaults(func=cancel)

    p = subparsers.add_parser("resume", help="resume an interrupted, cancelled or failed train job",
                              description="A new attempt of the job from its newest checkpoint, in the same run "
                                          "directory, continuing the same loss curve; follows it like train does.")
    p.add_argument("job_id", type=int, metavar="ID")
    _server_flag(p)
    p.add_argument("--where", choices=("auto", "local", "modal"),
                   help="run this attempt there instead (modal: carry on after running out of GPU memory)")
    p.add_argument("--gpu", choices=GPU_NAMES, help="Modal GPU for this attempt (default: the cheapest that fits)")
    p.add_argument("--no-follow", dest="follow", action="store_false", help="return once it is queued")
    p.set_defaults(func=resume)


def _client(args: argparse.Namespace):
    from engine.service.client import find_service

    return find_service(args.server)


def list_jobs(args: argparse.Namespace) -> int:
    import json

    jobs = _client(args).jobs(state=args.state)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'ID':>5}  {'KIND':<8}  {'STATE':<11}  {'PROGRESS':<12}  {'FOLDER':<28}  {'ON':<16}  CREATED")
    for job in jobs:
        progress = job.get("progress") or {}
        done = f"{progress['step']}/{progress['total']}" if progress else ""
        # Where placement sent it once it has run; before that, where it was asked to run.
        gpu = f" ({job['gpu']})" if job.get("gpu") else ""
        on = (job.get("ran_on") or f"{job.get('where', 'auto')}{gpu}") if job["kind"] == "train" else ""
        print(f"{job['id']:>5}  {job['kind']:<8}  {job['state']:<11}  {done:<12}  {job.get('run_dir') or '':<28}  "
              f"{on:<16}  {job['created_at'][:19].replace('T', ' ')}")
        note = job.get("stalled") or job.get("waiting")
        if note:  # why nothing moves: a stopped worker, or the job it queues behind
            print(f"{'':>5}  {note}")
    return 0


def cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    what = "cancelled" if job["state"] == "cancelled" else "stopping at its next step"
    print(f"job {job['id']}: {what}")
    return 0


def resume(args: argparse.Namespace) -> int:
    from engine.progress import TerminalProgress
    from engine.service.client import follow_to_end

    client = _client(args)
    job = client.resume(args.job_id, args.where, args.gpu)
    # Where it carries on from: a run stopped before any checkpoint starts over, and must say so.
    start = ("from its newest checkpoint" if job.get("config", {}).get("resume")
             else "starting again at step 0: the run kept no checkpoint")
    print(f"job {job['id']}: attempt {job['attempt']} queued, {start}", flush=True)
    if not args.follow:
        return 0
    # From the "queued" event of this attempt on: the earlier attempts' events are history.
    return follow_to_end(client, job["id"], TerminalProgress(), last_event_id=job["last_event_id"] - 1)
