"""`wmpo outbox push | status`: a store's upload queue, with no robot brought up.

Why: episodes a robot recorded while its learner was down wait in the store's outbox
(`<store>.outbox.sqlite`) until the next robot session's sync node sends them. `push` sends them
now, from any machine that has the store: it queues every committed episode the outbox does not
know yet (as the sync node does at start-up), uploads the queue with a progress bar, keeps
retrying while the learner is away (probing its health endpoint, so it resumes within seconds of
its return), and ends with a summary: delivered, already at the learner, still pending, refused.
Exit status 0 only when nothing is left pending or refused.

    wmpo outbox status --store data/rollouts
    wmpo outbox push --store data/rollouts --learner http://127.0.0.1:8765 [--timeout-s 600]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import urllib.parse
from pathlib import Path

from tqdm import tqdm
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.protocol.token import TokenError

from wmpo_ros.learner_client import LearnerClient
from wmpo_ros.outbox import Backoff, Outbox, OutboxBusy, OutboxWorker, store_uploader

POLL_S = 0.2
"""How often the progress bar looks at the queue."""
DRAIN_BACKOFF_MAX_S = 10.0
"""Backoff cap of a push: a learner that answers but fails (5xx, busy) is retried this often at
least, since someone is watching; one that does not answer at all is probed every few seconds."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument(
        "action",
        choices=["push", "status"],
        help="push: upload the queue to the learner now; status: show the queue",
    )
    parser.add_argument("--store", required=True, type=Path, help="the robot's episode store")
    parser.add_argument(
        "--outbox",
        type=Path,
        default=None,
        help="the outbox database (default: <store>.outbox.sqlite, where the sync node keeps it)",
    )
    parser.add_argument("--learner", default="", metavar="URL", help="push: learner service URL")
    parser.add_argument(
        "--learner-token-file",
        default="",
        help="push: file holding the learner's bearer token (default: WMPO_LEARNER_TOKEN)",
    )
    parser.add_argument(
        "--learner-ca", default="", help="push: CA bundle of an https learner with a private CA"
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="push: give up after this long; what is left stays queued (default: %(default)s)",
    )
    parser.add_argument(
        "--requeue-parked",
        action="store_true",
        help="push: retry episodes the learner refused before (after fixing the cause)",
    )


def _outbox_path(args: argparse.Namespace) -> Path:
    return args.outbox or Path(f"{args.store}.outbox.sqlite")


def _status(args: argparse.Namespace) -> int:
    path = _outbox_path(args)
    if not path.exists():
        print(f"wmpo outbox: no outbox at {path} (nothing was ever queued)", file=sys.stderr)
        return 1
    with Outbox(path) as outbox:
        stats = outbox.stats()
        oldest = "" if stats.oldest_pending_s is None else f", oldest pending {stats.oldest_pending_s:.0f} s"
        print(
            f"{path}: {stats.pending} pending, {stats.sent} sent, {stats.parked} refused by the "
            f"learner{oldest}"
        )
        for entry in outbox.entries("parked"):
            print(f"  refused {entry.episode_id}: {entry.last_error}")
        for entry in outbox.entries("pending"):
            print(
                f"  pending {entry.episode_id}: {entry.attempts} "
                f"attempt(s){f', last error: {entry.last_error}' if entry.last_error else ''}"
            )
    return 0


def _push(args: argparse.Namespace) -> int:
    if not args.learner:
        print("wmpo outbox push: give the learner's URL with --learner", file=sys.stderr)
        return 2
    if (
        urllib.parse.urlsplit(args.learner).scheme not in ("http", "https")
        or not urllib.parse.urlsplit(args.learner).hostname
    ):
        print(
            "wmpo outbox push: --learner must be an http:// or https:// URL with a host, got "
            f"'{args.learner}'",
            file=sys.stderr,
        )
        return 2
    if args.timeout_s <= 0:
        print(f"wmpo outbox push: --timeout-s must be > 0, got {args.timeout_s}", file=sys.stderr)
        return 2
    if not (args.store / "zarr.json").is_file():
        print(f"wmpo outbox push: no episode store at {args.store}", file=sys.stderr)
        return 2
    with (
        EpisodeStore.open(args.store) as store,
        Outbox(_outbox_path(args)) as outbox,
        LearnerClient.from_env(
            args.learner, args.learner_token_file or None, verify=args.learner_ca or True
        ) as client,
    ):
        logging.getLogger("wmpo.outbox").setLevel(
            logging.ERROR
        )  # the bar shows the waits; refusals still print
        worker = OutboxWorker(
            outbox,
            store_uploader(client, store),
            backoff=Backoff(max_s=DRAIN_BACKOFF_MAX_S),
            probe=client.answers,
        )
        worker.start()  # first: refuses (OutboxBusy) while a robot's sync node uploads this outbox
        try:
            new = [eid for eid in store.episode_ids if outbox.enqueue(eid)]
            requeued = [
                e.episode_id
                for e in outbox.entries("parked")
                if args.requeue_parked and outbox.requeue(e.episode_id)
            ]
            pending = {e.episode_id for e in outbox.entries("pending")}
            worker.wake()
            print(
                f"{outbox.path}: {len(pending)} episode(s) to deliver to {client.base_url} ({len(new)} "
                "newly queued from the store"
                f"{f', {len(requeued)} refused before and queued again' if requeued else ''})",
                file=sys.stderr,
            )
            deadline = time.monotonic() + args.timeout_s
            note = ""
            with tqdm(total=len(pending), desc="outbox push", unit="episode", mininterval=1.0) as bar:
                while True:
                    left = [e for e in outbox.entries("pending") if e.episode_id in pending]
                    waiting = (
                        "learner not taking uploads; retrying as soon as it answers"
                        if any(e.last_error for e in left)
                        else ""
                    )
                    if waiting != note:
                        note = waiting
                        bar.set_postfix_str(note, refresh=False)
                    bar.update(len(pending) - len(left) - bar.n)
                    if not left or time.monotonic() > deadline:
                        break
                    time.sleep(POLL_S)
        finally:
            worker.stop()
        entries = {eid: outbox.entry(eid) for eid in pending}
        sent = [e for e in entries.values() if e is not None and e.state == "sent"]
        already = sum(e.result == "already_stored" for e in sent)
        refused = [e for e in entries.values() if e is not None and e.state == "parked"]
        remaining = [e for e in entries.values() if e is not None and e.state == "pending"]
        print(
            f"delivered {len(sent)} of {len(pending)} episode(s) ({already} the learner already had); "
            f"{len(remaining)} still pending, {len(refused)} refused",
            file=sys.stderr,
        )
        for e in refused:
            print(f"  refused {e.episode_id}: {e.last_error}", file=sys.stderr)
        if remaining:
            print(
                "  still pending (they stay queued; run this again later): last error: "
                f"{remaining[0].last_error}",
                file=sys.stderr,
            )
        return 0 if not remaining and not refused else 1


def run(args: argparse.Namespace) -> int:
    try:
        return _status(args) if args.action == "status" else _push(args)
    except (OutboxBusy, TokenError, OSError, ValueError) as exc:
        print(f"wmpo outbox {args.action}: {exc}", file=sys.stderr)
        return 1
