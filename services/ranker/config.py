"""Ranker configuration (flags ``xdrec serve ranker --help``; env ``XDREC_<FLAG>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common.config import ServerConfig, option
from services.common.endpoints import ENCODER, RANKER, SCORER
from services.common.tls import TlsConfig

if TYPE_CHECKING:
    from services.ranker.circuit_breaker import BreakerSettings

DEFAULT_PORT = RANKER.grpc_port
DEFAULT_METRICS_PORT = RANKER.metrics_port


@dataclass(frozen=True)
class RankerConfig(ServerConfig):
    """Where the encoder and scorer are, and the limits of one Recommend request."""

    port: int = option(DEFAULT_PORT, "gRPC port (RankerService)")
    metrics_port: int = option(DEFAULT_METRICS_PORT, "Prometheus /metrics port (0 disables)")
    encoder: str = option(f"localhost:{ENCODER.grpc_port}", "encoder address HOST:PORT")
    scorer: str = option(f"localhost:{SCORER.grpc_port}", "scorer address HOST:PORT")
    max_k: int = option(100, "largest k a request may ask for (RESOURCE_EXHAUSTED above)")
    max_candidates: int = option(
        5000, "most candidate_item_ids per request (RESOURCE_EXHAUSTED above)"
    )
    max_excluded: int = option(5000, "most exclude_item_ids per request (RESOURCE_EXHAUSTED above)")
    max_user_id_length: int = option(256, "longest accepted user_id, in characters")
    default_timeout_s: float = option(
        2.0, "deadline for the downstream calls when the caller sets none, in seconds"
    )
    health_interval_s: float = option(
        1.0, "seconds between health checks of the encoder and the scorer"
    )
    score_output: str = option("scores", "name of the model output that holds the scores")
    ranking_ops: str = option(
        "top_k",
        "ranking operators applied in this order to the scored candidates (comma-separated, "
        "ending with top_k)",
    )
    catalog_cache_size: int = option(4, "model versions whose catalogue is kept in memory")
    max_in_flight: int = option(
        64,
        "most Recommends worked on at once; more wait up to --queue-budget-ms, then get "
        "RESOURCE_EXHAUSTED (0: no limit)",
    )
    queue_budget_ms: float = option(
        20.0,
        "longest a Recommend waits for an in-flight slot before RESOURCE_EXHAUSTED, in ms "
        "(0: refuse at once when all slots are busy)",
    )
    latency_target_ms: float = option(
        0.0,
        "when > 0, a target for the mean time a Recommend holds its in-flight slot: the bound "
        "is lowered by 10% after a 100 ms window over it and raised by one after a window "
        "under it that reached the bound (between --min-in-flight and --max-in-flight), so "
        "admitted requests stay fast whatever the pod's capacity (by Little's law a fixed "
        "bound of 64 on a ranker completing 60 requests/s means a second each). It sheds "
        "whenever latency rises, for any reason, so it is opt-in; 0: the bound is "
        "--max-in-flight",
    )
    min_in_flight: int = option(4, "lowest in-flight bound --latency-target-ms may set")
    fallback_reserve_ms: float = option(
        20.0,
        "time kept back from the caller's deadline for the popularity fallback when the "
        "encoder or scorer is too slow, in ms",
    )
    coalesce: bool = option(
        True,
        "coalesce concurrent Recommends into one EncodeBatch and one Predict per batch (off: "
        "one Encode and one Predict each)",
    )
    coalesce_max_batch: int = option(32, "most Recommends in one coalesced batch")
    coalesce_max_wait_ms: float = option(
        2.0,
        "longest a Recommend waits for company, in ms from its arrival; it waits only while "
        "--coalesce-busy-batches encoder calls are in flight, else it goes at once",
    )
    coalesce_busy_batches: int = option(
        2,
        "encoder calls (plain or batched) in flight from which a new Recommend waits for "
        "company; below it, it goes on the next event-loop turn with only the requests already "
        "waiting (so coalescing adds no wait at moderate load); 1: any call in flight makes it "
        "wait",
    )
    coalesce_busy_recommends: int = option(
        4,
        "Recommends in flight in the ranker from which a single encoder call in flight is "
        "enough to make a new Recommend wait for company (near saturation concurrency climbs "
        "steeply: batch all it can); 0: only --coalesce-busy-batches counts",
    )
    reconnect_initial_backoff_ms: int = option(
        100, "first delay before redialling a lost encoder or scorer, in ms (gRPC's default: 1000)"
    )
    reconnect_max_backoff_ms: int = option(
        500,
        "longest delay between redials of a lost encoder or scorer, in ms: bounds how long the "
        "ranker stays degraded after the dependency is back (gRPC's default: 120000)",
    )
    reconnect_min_connect_timeout_ms: int = option(
        1000,
        "how long one connection attempt to the encoder or scorer may take, in ms (gRPC's "
        "grpc.min_reconnect_backoff_ms; default 20000)",
    )
    breaker_slow_call_ms: float = option(
        500.0,
        "circuit breaker: an encoder/scorer call slower than this counts as failed even when "
        "it answers, in ms",
    )
    breaker_window: int = option(
        20, "circuit breaker: how many of a dependency's most recent calls are judged"
    )
    breaker_min_calls: int = option(
        10, "circuit breaker: calls needed in the window before it may open (0: breakers off)"
    )
    breaker_failure_ratio: float = option(
        0.5,
        "circuit breaker: share of slow or failed calls in the window that opens it; open = "
        "that dependency is not called and the answer is the flagged popularity fallback",
    )
    breaker_open_ms: float = option(
        2000.0,
        "circuit breaker: cool-down in ms before an open breaker lets probe calls through",
    )
    breaker_half_open_probes: int = option(
        1, "circuit breaker: probe calls after the cool-down; all fast and OK = closed again"
    )

    downstream_tls_ca: str = option(
        "",
        "PEM CA bundle that the encoder's and scorer's certificates must chain to; set = call "
        "them over TLS (empty = plaintext)",
    )
    downstream_tls_cert: str = option(
        "",
        "PEM client certificate presented to the encoder and scorer (mutual TLS; empty = "
        "--tls-cert when TLS to them is on)",
    )
    downstream_tls_key: str = option(
        "", "PEM private key of --downstream-tls-cert (empty = --tls-key)"
    )

    @property
    def breaker(self) -> BreakerSettings:
        """The ``--breaker-*`` flags as the breakers' settings."""
        from services.ranker.circuit_breaker import BreakerSettings  # --help stays light

        return BreakerSettings(
            slow_call_s=self.breaker_slow_call_ms / 1000.0,
            window=self.breaker_window,
            min_calls=self.breaker_min_calls,
            failure_ratio=self.breaker_failure_ratio,
            open_s=self.breaker_open_ms / 1000.0,
            half_open_probes=max(self.breaker_half_open_probes, 1),
        )

    @property
    def downstream_tls(self) -> TlsConfig | None:
        """How the ranker dials the encoder and scorer; None = plaintext.

        The client certificate defaults to the ranker's own server certificate: one
        certificate per pod, used in both directions, is what cert-manager hands out.
        """
        if not self.downstream_tls_ca:
            if self.downstream_tls_cert or self.downstream_tls_key:
                raise ValueError(
                    "--downstream-tls-cert/--downstream-tls-key need --downstream-tls-ca"
                )
            return None
        explicit = bool(self.downstream_tls_cert or self.downstream_tls_key)
        return TlsConfig(
            cert=self.downstream_tls_cert if explicit else self.tls_cert,
            key=self.downstream_tls_key if explicit else self.tls_key,
            ca=self.downstream_tls_ca,
            flag_prefix="--downstream-tls" if explicit else "--tls",
        )
