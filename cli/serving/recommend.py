"""``xdrec recommend``: ask a running ranker for recommendations and print them as a table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.auth import parse_tokens
from services.common.endpoints import RANKER
from services.common.tls import TlsConfig, open_sync_channel


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls-ca/--tls-cert/--tls-key; None (plaintext) when none is set."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsConfig(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca).channel_credentials()


def auth_metadata(token_file: str) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <token>`` with the first token of ``token_file`` (if given)."""
    if not token_file:
        return ()
    try:
        text = Path(token_file).read_text()
    except OSError as exc:
        raise ValueError(f"--token-file: cannot read {token_file!r} ({exc.strerror})") from None
    token = next(iter(parse_tokens(text, token_file)))
    return (("authorization", f"Bearer {token}"),)


def wait_until_serving(channel: grpc.Channel, timeout: float) -> bool:
    """Polls the ranker's health until SERVING or ``timeout`` seconds have passed."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = stub.Check(
                health_pb2.HealthCheckRequest(service=RANKER.health_name), timeout=1.0
            )
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def format_table(response: ranker_pb2.RecommendResponse, user_id: str) -> str:
    """A readable table: rank, score, item id, title; then version, user status and fallback."""
    status = tensor_pb2.UserStatus.Name(response.user_status).removeprefix("USER_STATUS_")
    lines = [
        f"user {user_id} ({status}) - model {response.model.name} version {response.model.version}"
    ]
    if response.fallback == ranker_pb2.FALLBACK_POPULARITY:
        lines.append(
            "fallback: popularity (user unknown to both domains; score = popularity share)"
        )
    id_width = max([len("item id"), *(len(i.item_id) for i in response.items)])
    lines.append(f"{'rank':>4}  {'score':>10}  {'item id':<{id_width}}  title")
    for item in response.items:
        lines.append(
            f"{item.rank:>4}  {item.score:>10.4f}  {item.item_id:<{id_width}}  {item.title}"
        )
    if not response.items:
        lines.append("(no items: every candidate was seen, excluded or unknown)")
    if response.unknown_candidate_ids:
        lines.append("unknown candidate ids: " + ", ".join(response.unknown_candidate_ids))
    lines.append(f"request id: {response.request_id}")
    return "\n".join(lines)


def as_json(response: ranker_pb2.RecommendResponse) -> str:
    return json.dumps(
        {
            "model": {"name": response.model.name, "version": response.model.version},
            "user_status": tensor_pb2.UserStatus.Name(response.user_status),
            "fallback": ranker_pb2.Fallback.Name(response.fallback),
            "items": [
                {"rank": i.rank, "score": i.score, "item_id": i.item_id, "title": i.title}
                for i in response.items
            ],
            "unknown_candidate_ids": list(response.unknown_candidate_ids),
            "request_id": response.request_id,
        },
        indent=2,
    )


def recommend(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Calls Recommend once; prints the table (or JSON); returns the exit code."""
    request = ranker_pb2.RecommendRequest(
        user_id=args.user,
        k=args.k,
        candidate_item_ids=args.candidates or [],
        exclude_item_ids=args.exclude or [],
        include_seen=args.include_seen,
        model=tensor_pb2.ModelRef(name=args.model or "", version=args.model_version or ""),
    )
    try:
        credentials = channel_credentials(args)
        metadata = auth_metadata(args.token_file)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    options = (
        [("grpc.ssl_target_name_override", args.tls_server_name)]
        if credentials is not None and args.tls_server_name
        else []
    )
    with open_sync_channel(args.ranker, credentials, options) as channel:
        if args.wait > 0 and not wait_until_serving(channel, args.wait):
            print(f"error: ranker at {args.ranker} is not SERVING after {args.wait:g}s", file=err)
            return 2
        try:
            response = ranker_pb2_grpc.RankerServiceStub(channel).Recommend(
                request,
                timeout=args.timeout,
                metadata=(("x-request-id", uuid.uuid4().hex), *metadata),
            )
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=err)
            return 1
    print(as_json(response) if args.json else format_table(response, args.user), file=out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``recommend``."""
    parser = subparsers.add_parser(
        "recommend",
        help="ask a running ranker for a user's top-k items and print them",
        description="Call RankerService.Recommend and print rank, score, item id and title, "
        "with the model version used, the user's status (WARM / COLD_START / UNKNOWN) and "
        "whether the popularity fallback applied.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  xdrec recommend --user 196 -k 10\n"
        f"  xdrec recommend --ranker localhost:{RANKER.grpc_port} --user 196 -k 5 "
        "--candidates 50 181 1\n",
    )
    parser.add_argument(
        "--ranker",
        default=os.environ.get("XDREC_RANKER", f"localhost:{RANKER.grpc_port}"),
        help="ranker address HOST:PORT (env XDREC_RANKER; default: %(default)s)",
    )
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("-k", type=int, default=10, help="number of items (default: %(default)s)")
    parser.add_argument("--candidates", nargs="+", metavar="ITEM", help="rank only these item ids")
    parser.add_argument("--exclude", nargs="+", metavar="ITEM", help="never return these item ids")
    parser.add_argument(
        "--include-seen", action="store_true", help="allow items the user already interacted with"
    )
    parser.add_argument("--model", help="model name to use (default: the encoder's model)")
    parser.add_argument("--model-version", help="pin a model version (default: the newest)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="deadline in seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the ranker to report SERVING (default: no wait)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    security = parser.add_argument_group(
        "transport security", "plaintext unless --tls or one of --tls-ca/--tls-cert/--tls-key"
    )
    security.add_argument(
        "--tls", action="store_true", help="use TLS (implied by --tls-ca/--tls-cert/--tls-key)"
    )
    for flag, help_text in (
        (
            "tls-ca",
            "PEM CA bundle the ranker's certificate must chain to (TLS; empty = system roots)",
        ),
        ("tls-cert", "PEM client certificate (mutual TLS)"),
        ("tls-key", "PEM private key of --tls-cert"),
        (
            "tls-server-name",
            "name to verify in the ranker's certificate instead of the host "
            "dialled (e.g. <release>-ranker through a port-forward)",
        ),
        ("token-file", "file whose first token is sent as 'authorization: Bearer <token>'"),
    ):
        env = "XDREC_RECOMMEND_" + flag.upper().replace("-", "_")
        security.add_argument(
            f"--{flag}",
            default=os.environ.get(env, ""),
            help=f"{help_text} (env {env})",
        )
    parser.set_defaults(handler=recommend)
