"""What the services themselves saw during a load test, read from their Prometheus endpoints.

The load test measures latency from the client; the services' own counters say where the time
went and whether errors came from the ranker or a downstream: requests by method and status code,
mean server-side latency per RPC, and for the scorer the queue wait vs ONNX Runtime compute time
and the mean batch size. Scraped before and after a run; the difference is the run's share.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str, timeout: float = 2.0) -> dict[Sample, float]:
    """All samples of one /metrics endpoint, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs
        text = response.read().decode()
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict[Sample, float], after: dict[Sample, float]) -> dict[Sample, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def _sum(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def summarize(samples: dict[Sample, float]) -> dict[str, Any]:
    """Per service: requests by method and code, mean latency; scorer queue/compute/batch size."""
    out: dict[str, Any] = {}
    requests: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (name, labels), value in samples.items():
        if name == "xdrec_rpc_requests_total" and value:
            label = dict(labels)
            requests[(label["service"], label["method"])][label["code"]] = value
    for (service, method), codes in sorted(requests.items()):
        count = _sum(samples, "xdrec_rpc_latency_seconds_count", service=service, method=method)
        total = _sum(samples, "xdrec_rpc_latency_seconds_sum", service=service, method=method)
        out.setdefault(service, {})[method] = {
            "requests_by_code": codes,
            "mean_latency_ms": 1000 * total / count if count else None,
        }
    runs = _sum(samples, "xdrec_inference_compute_seconds_count")
    if runs:
        queued = _sum(samples, "xdrec_inference_queue_seconds_count")
        out.setdefault("scorer", {})["inference"] = {
            "runs": runs,
            "mean_batch_size": _sum(samples, "xdrec_inference_batch_size_sum") / runs,
            "mean_compute_ms_per_run": 1000
            * _sum(samples, "xdrec_inference_compute_seconds_sum")
            / runs,
            "mean_queue_wait_ms": 1000 * _sum(samples, "xdrec_inference_queue_seconds_sum") / queued
            if queued
            else None,
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["server-side (Prometheus, this run):"]
    for service, methods in summary.items():
        for method, data in methods.items():
            if method == "inference":
                wait = data["mean_queue_wait_ms"]
                lines.append(
                    f"  {service:<8} inference: {data['runs']:.0f} ORT runs, mean batch "
                    f"{data['mean_batch_size']:.2f}, compute {data['mean_compute_ms_per_run']:.3f} ms/run, "
                    f"queue wait {'n/a' if wait is None else f'{wait:.3f} ms'}"
                )
                continue
            codes = ", ".join(
                f"{code} {count:.0f}" for code, count in sorted(data["requests_by_code"].items())
            )
            mean = data["mean_latency_ms"]
            lines.append(
                f"  {service:<8} {method:<12} {codes}; mean {'n/a' if mean is None else f'{mean:.2f} ms'}"
            )
    return "\n".join(lines)
