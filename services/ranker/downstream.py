"""Calls from the ranker to the encoder and the scorer.

Why a wrapper: every downstream call must (1) carry the caller's remaining deadline, so a
request never outlives its caller and DEADLINE_EXCEEDED is honoured end to end, (2) carry the
request id in the ``x-request-id`` metadata, and (3) turn the downstream status into one the
ranker's caller can act on: UNAVAILABLE and DEADLINE_EXCEEDED say which service failed; client
errors (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) keep their code.

Why the reconnect backoff is tuned (``Reconnect``): with gRPC's defaults a channel whose server
went away waits 1 s, then up to 120 s between redials, so a restarted encoder or scorer is ignored
for seconds after it is back (every call fails fast with UNAVAILABLE in between). A short, capped
backoff bounds that window to about ``max_backoff_ms``; redials are cheap TCP connects.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.endpoints import ENCODER, SCORER
from services.common.errors import (
    DeadlineExceeded,
    Internal,
    Relayed,
    ServiceError,
    Unavailable,
)
from services.common.rpc import outgoing_metadata
from services.common.tensors import TensorError, from_proto
from services.common.tls import open_channel

R = TypeVar("R")

SERVING = health_pb2.HealthCheckResponse.SERVING


def relay(service: str, address: str, what: str, exc: grpc.aio.AioRpcError) -> ServiceError:
    """The error the ranker's caller sees for a failed downstream call."""
    return relay_status(service, address, what, exc.code(), exc.details() or "")


def relay_status(
    service: str, address: str, what: str, code: grpc.StatusCode, details: str
) -> ServiceError:
    """``relay`` for a status given as code and message (a batch item's own error)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{service} at {address} is unavailable during {what}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded waiting for the {service} ({what})")
    return Relayed(code, f"{service}: {details}")


STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
"""``grpc.StatusCode`` by its integer (batch items carry their status as a number)."""


def decode_downstream(tensor: tensor_pb2.Tensor, what: str) -> np.ndarray:
    """Decodes a tensor a downstream service sent; a malformed one is an INTERNAL error."""
    try:
        return from_proto(tensor)
    except TensorError as exc:
        raise Internal(f"{what}: {exc}") from None


def score_output(response: scorer_pb2.PredictResponse, name: str) -> np.ndarray:
    """The named output of a Predict answer; INTERNAL when the scorer left it out."""
    for tensor in response.outputs:
        if tensor.name == name:
            return decode_downstream(tensor, "scorer output")
    raise Internal(f"scorer returned no '{name}' output")


@dataclass(frozen=True)
class Reconnect:
    """How fast a downstream channel redials a lost server (see the module docstring)."""

    initial_backoff_ms: int = 100
    max_backoff_ms: int = 500
    min_connect_timeout_ms: int = 1000

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.initial_reconnect_backoff_ms", self.initial_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self.min_connect_timeout_ms),
        ]


class Downstream:
    """One downstream service: its channel, a health stub and error-mapped unary calls."""

    def __init__(
        self,
        service: str,
        address: str,
        health_name: str,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.service = service
        self.address = address
        self.health_name = health_name
        self._options = [
            *(reconnect or Reconnect()).channel_options(),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            # Headless Services resolve to every pod: spread calls over all of them
            # instead of pinning the first address (pick_first).
            ("grpc.lb_policy_name", "round_robin"),
        ]
        self._open(credentials)

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        """A channel with ``credentials`` and the stubs on it (subclasses add theirs)."""
        self.channel = open_channel(self.address, credentials, options=self._options)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def reopen(self, credentials: grpc.ChannelCredentials | None, grace_s: float) -> None:
        """New calls go over a new channel with ``credentials`` (renewed certificate files);
        calls in flight on the old one get ``grace_s`` seconds to finish before it closes."""
        old = self.channel
        self._open(credentials)
        await old.close(grace_s)

    async def call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Any,
        *,
        deadline: float,
        what: str,
    ) -> R:
        """Calls ``method`` with the remaining time until ``deadline`` (a monotonic instant)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling the {self.service} ({what})")
        try:
            return await method(request, timeout=remaining, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise relay(self.service, self.address, what, exc) from None

    async def serving(self, timeout: float) -> tuple[bool, str]:
        """Whether the service answers its health check as SERVING, and why not."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.health_name), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return False, f"{self.service} at {self.address}: {exc.code().name}"
        if response.status != SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return False, f"{self.service} at {self.address} is {name}"
        return True, ""

    async def component_serving(self, name: str, timeout: float) -> bool | None:
        """Whether the service reports its component ``name`` (a health name of its own, such
        as the encoder's feature store) SERVING; None when it reports no such name or does not
        answer (then ``serving`` says what is wrong with the service itself)."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=name), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return response.status == SERVING

    async def close(self) -> None:
        await self.channel.close()


class EncoderClient(Downstream):
    """Typed calls to the encoder."""

    def __init__(
        self,
        address: str,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        super().__init__("encoder", address, ENCODER.health_name, credentials, reconnect)

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        super()._open(credentials)
        self.stub = encoder_pb2_grpc.EncoderServiceStub(self.channel)

    async def encode(
        self, request: encoder_pb2.EncodeRequest, deadline: float
    ) -> encoder_pb2.EncodeResponse:
        return await self.call(self.stub.Encode, request, deadline=deadline, what="Encode")

    async def encode_batch(
        self, request: encoder_pb2.EncodeBatchRequest, deadline: float
    ) -> encoder_pb2.EncodeBatchResponse:
        return await self.call(
            self.stub.EncodeBatch, request, deadline=deadline, what="EncodeBatch"
        )

    async def catalog(
        self, request: encoder_pb2.GetCatalogRequest, deadline: float
    ) -> encoder_pb2.GetCatalogResponse:
        return await self.call(self.stub.GetCatalog, request, deadline=deadline, what="GetCatalog")

    async def record_events(
        self, request: events_pb2.RecordEventsRequest, deadline: float
    ) -> events_pb2.RecordEventsResponse:
        return await self.call(
            self.stub.RecordEvents, request, deadline=deadline, what="RecordEvents"
        )

    async def forget_user(
        self, request: events_pb2.ForgetUserRequest, deadline: float
    ) -> events_pb2.ForgetUserResponse:
        return await self.call(self.stub.ForgetUser, request, deadline=deadline, what="ForgetUser")


class ScorerClient(Downstream):
    """Typed calls to the scorer."""

    def __init__(
        self,
        address: str,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        super().__init__("scorer", address, SCORER.health_name, credentials, reconnect)

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        super()._open(credentials)
        self.stub = scorer_pb2_grpc.ScorerServiceStub(self.channel)

    async def predict(
        self, request: scorer_pb2.PredictRequest, deadline: float
    ) -> scorer_pb2.PredictResponse:
        return await self.call(self.stub.Predict, request, deadline=deadline, what="Predict")
