"""``xdrec features load|export|record``: fill the Redis feature store from a snapshot, write what
it holds (snapshot plus events recorded online) as a training log in the generic format, and
record interactions live through a running ranker.

Why export exists: it closes the feedback loop. ``xdrec train`` with ``data.dataset=generic``
reads the exported CSV, so the next model learns from what users did with what was served.
Why hashed user ids by default: the log leaves the serving system (to a training job, a bucket);
the keyed hash (``services.encoder.user_hash``) keeps users apart without naming them. The model
never needs the raw id, only that one user's events share one id.

The Redis password comes from ``--redis-password-file`` or env ``XDREC_REDIS_PASSWORD``, as for
the encoder; never from a flag.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.common.endpoints import RANKER

EXPORT_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "domain", "kind", "event_id")
PASSWORD_ENV = "XDREC_REDIS_PASSWORD"


def _password(args: argparse.Namespace) -> str:
    if args.redis_password_file:
        return Path(args.redis_password_file).read_text(encoding="utf-8").strip()
    return os.environ.get(PASSWORD_ENV, "")


def _store(args: argparse.Namespace):
    from services.encoder.feature_store import FeatureStoreConfig
    from services.encoder.redis_store import RedisFeatureStore

    return RedisFeatureStore.from_config(
        FeatureStoreConfig(
            backend="redis",
            redis_url=args.redis_url,
            redis_password=_password(args),
            redis_prefix=args.redis_prefix,
            redis_timeout_s=args.timeout_s,
            redis_write_timeout_s=args.timeout_s,
            max_history=args.max_history,
        )
    )


async def _load(args: argparse.Namespace) -> int:
    from services.encoder.bulk_load import LoadProgress, load_snapshot, read_rows

    store = _store(args)
    last = [0.0]

    def progress(p: LoadProgress) -> None:
        if p.seconds - last[0] >= args.progress_every_s:
            last[0] = p.seconds
            print(
                f"  {p.rows:>10,} rows  {p.added:>10,} new  {p.rows_per_s:>10,.0f} events/s",
                file=sys.stderr,
            )

    try:
        await store.ping()
        before = await store.memory_used()
        total = await load_snapshot(store, read_rows(args.snapshot), args.batch_size, progress)
        after = await store.memory_used()
    finally:
        await store.close()
    print(
        f"loaded {args.snapshot}: {total.rows:,} rows, {total.added:,} new "
        f"({total.rows - total.added:,} already present) in {total.seconds:.1f} s, "
        f"{total.rows_per_s:,.0f} events/s; redis used_memory {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB"
    )
    return 0


async def _export(args: argparse.Namespace) -> int:
    from services.encoder.user_hash import UserHasher

    hasher, source = (
        (None, "") if args.raw_user_ids else UserHasher.configured(args.user_hash_key_file)
    )
    store = _store(args)
    start = time.perf_counter()
    rows = 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        await store.ping()
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(EXPORT_COLUMNS)
            async for user, event in store.events():
                if args.recorded_only and event.event_id.startswith("snap-"):
                    continue
                writer.writerow(
                    (
                        hasher(user) if hasher else user,
                        event.item_id,
                        repr(event.timestamp),
                        1,
                        event.domain,
                        event.kind,
                        event.event_id,
                    )
                )
                rows += 1
                if rows % 100_000 == 0:
                    print(f"  {rows:>10,} events written", file=sys.stderr)
    finally:
        await store.close()
    ids = "raw user ids" if hasher is None else f"user ids hashed with {source}"
    print(
        f"exported {rows:,} events to {out} in {time.perf_counter() - start:.1f} s ({ids}); "
        f"train on it with data.dataset=generic, data.interactions_path={out}"
    )
    return 0


def _record(args: argparse.Namespace) -> int:
    """One RecordEvents call at a running ranker (what an application does after a click)."""
    import uuid

    import grpc
    from xdrec.common.v1 import events_pb2
    from xdrec.ranker.v1 import ranker_pb2_grpc

    kind = getattr(events_pb2, f"EVENT_KIND_{args.kind.upper()}")

    def event_id(n: int) -> str:
        if not args.event_id:
            return uuid.uuid4().hex
        return args.event_id if len(args.item) == 1 else f"{args.event_id}:{n}"

    events = [
        events_pb2.UserEvent(
            event_id=event_id(n),
            domain=args.domain,
            item_id=item,
            kind=kind,
            timestamp=time.time(),
        )
        for n, item in enumerate(args.item)
    ]
    with grpc.insecure_channel(args.ranker) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        try:
            ack = stub.RecordEvents(
                events_pb2.RecordEventsRequest(user_id=args.user, events=events),
                timeout=args.timeout_s,
            )
        except grpc.RpcError as exc:
            print(f"xdrec features record: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"recorded for user {args.user}: {ack.accepted} accepted, {ack.duplicates} duplicates")
    return 0


def _run(
    coro_fn: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from services.encoder.feature_store import FeatureStoreError, FeatureStoreUnavailable

        try:
            return asyncio.run(coro_fn(args))
        except (FeatureStoreUnavailable, FeatureStoreError, ValueError, OSError) as exc:
            print(f"xdrec features {args.features_command}: {exc}", file=sys.stderr)
            return 1

    return handler


def _redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("XDREC_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis server (default: env XDREC_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--redis-password-file",
        default=os.environ.get("XDREC_REDIS_PASSWORD_FILE", ""),
        help=f"file holding the password (else env {PASSWORD_ENV})",
    )
    parser.add_argument(
        "--redis-prefix",
        default=os.environ.get("XDREC_REDIS_PREFIX", "xdrec"),
        help="key prefix, as the encoder's --redis-prefix",
    )
    parser.add_argument("--timeout-s", type=float, default=30.0, help="bound per Redis call")
    parser.add_argument(
        "--max-history", type=int, default=5000, help="most events kept per user and domain"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="load a snapshot into the Redis feature store, or export what it holds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="features_command", metavar="ACTION", required=True)

    load = commands.add_parser(
        "load",
        help="bulk-load features.tsv / Parquet into Redis (idempotent)",
        description="Loads a snapshot (features.tsv, or .parquet with the same columns: "
        "user_id, domain, item_id, timestamp) into the Redis feature store. Loading the same "
        "snapshot twice adds nothing.",
    )
    load.add_argument("snapshot", help="features.tsv or .parquet")
    _redis_options(load)
    load.add_argument("--batch-size", type=int, default=20_000, help="rows per pipeline")
    load.add_argument(
        "--progress-every-s", type=float, default=2.0, help="seconds between progress lines"
    )
    load.set_defaults(handler=_run(_load))

    export = commands.add_parser(
        "export",
        help="write the stored events as a generic-format training log (CSV)",
        description="Writes every stored event as CSV with the columns "
        f"{', '.join(EXPORT_COLUMNS)} (the trainer's generic format). User ids are replaced by "
        "a keyed hash unless --raw-user-ids.",
    )
    export.add_argument("--out", required=True, help="CSV file to write")
    _redis_options(export)
    export.add_argument(
        "--recorded-only",
        action="store_true",
        help="only events recorded online (RecordEvents), not the loaded snapshot",
    )
    export.add_argument(
        "--user-hash-key-file",
        default="",
        help="key of the user id hash (else env XDREC_USER_HASH_KEY, else a random key)",
    )
    export.add_argument(
        "--raw-user-ids", action="store_true", help="write raw user ids instead of keyed hashes"
    )
    export.set_defaults(handler=_run(_export))

    record = commands.add_parser(
        "record",
        help="record interactions of one user through a running ranker (RecordEvents)",
        description="Sends one RecordEvents call to the ranker: the next Recommend for the user "
        "sees these items (an unknown user with source items becomes COLD_START, target items "
        "make a user WARM and are no longer recommended).",
    )
    record.add_argument(
        "--ranker", default=f"127.0.0.1:{RANKER.grpc_port}", help="ranker address host:port"
    )
    record.add_argument("--user", required=True, help="user id")
    record.add_argument("--item", required=True, action="append", help="item id (repeatable)")
    record.add_argument("--domain", default="target", help="the items' domain (source|target)")
    record.add_argument(
        "--kind", choices=("view", "click", "purchase"), default="click", help="interaction kind"
    )
    record.add_argument(
        "--event-id", default="", help="idempotency key (default: a random id per item)"
    )
    record.add_argument("--timeout-s", type=float, default=5.0, help="call deadline")
    record.set_defaults(handler=_record)
