"""bench/server_metrics.py on real prometheus_client output: the run's delta per service."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tests.fixtures.scripts import load_script

lt = load_script(
    Path(__file__).resolve().parents[3] / "bench" / "loadtest.py", "xdrec_bench_loadtest"
)

server_metrics = lt._server_metrics()


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    requests = Counter("xdrec_rpc_requests", "", ["service", "method", "code"], registry=registry)
    latency = Histogram("xdrec_rpc_latency_seconds", "", ["service", "method"], registry=registry)
    compute = Histogram(
        "xdrec_inference_compute_seconds", "", ["model", "version"], registry=registry
    )
    batch = Histogram("xdrec_inference_batch_size", "", ["model", "version"], registry=registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = generate_latest(registry)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics", requests, latency, compute, batch
    server.shutdown()


def test_run_delta_per_service(endpoint):
    url, requests, latency, compute, batch = endpoint
    requests.labels("ranker", "Recommend", "OK").inc(5)  # before the run: not counted
    latency.labels("ranker", "Recommend").observe(1.0)
    before = server_metrics.scrape(url)
    requests.labels("ranker", "Recommend", "OK").inc(3)
    requests.labels("ranker", "Recommend", "INVALID_ARGUMENT").inc(1)
    for seconds in (0.002, 0.004, 0.006, 0.008):
        latency.labels("ranker", "Recommend").observe(seconds)
    compute.labels("m", "1").observe(0.001)
    batch.labels("m", "1").observe(4)
    summary = server_metrics.summarize(server_metrics.delta(before, server_metrics.scrape(url)))
    recommend = summary["ranker"]["Recommend"]
    assert recommend["requests_by_code"] == {"OK": 3.0, "INVALID_ARGUMENT": 1.0}
    assert recommend["mean_latency_ms"] == pytest.approx(5.0)
    assert summary["scorer"]["inference"]["mean_batch_size"] == pytest.approx(4.0)
    assert "Recommend" in server_metrics.format_summary(summary)


def test_module_is_a_sibling_of_the_load_test():
    assert Path(server_metrics.__file__).parent == Path(lt.__file__).parent
