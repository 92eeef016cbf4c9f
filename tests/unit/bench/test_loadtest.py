"""Unit tests of bench/loadtest.py: percentiles, summaries, budgets, the open-loop scheduler,
the workload classes and the loopback guard. No server involved (fake senders)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script

LOADTEST = Path(__file__).resolve().parents[3] / "bench" / "loadtest.py"


lt = load_script(LOADTEST, "xdrec_bench_loadtest")
SPEC = lt.RequestSpec(kind="warm", user_id="u1", candidates=(), k=10)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert lt.percentile(values, 50) == 50
    assert lt.percentile(values, 95) == 95
    assert lt.percentile(values, 99) == 99
    assert lt.percentile(values, 100) == 100
    assert lt.percentile(values, 0) == 1
    # never interpolated: p99 of 10 samples is the largest one, an observed value
    assert lt.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1000.0], 99) == 1000.0
    assert lt.percentile([7.0], 99) == 7.0
    assert math.isnan(lt.percentile([], 50))
    with pytest.raises(ValueError):
        lt.percentile([1.0], 101)


def test_latency_summary_in_milliseconds() -> None:
    s = lt.LatencySummary.of([0.004, 0.001, 0.003, 0.002])
    assert s.count == 4
    assert s.p50_ms == pytest.approx(2.0)
    assert s.p99_ms == pytest.approx(4.0) and s.max_ms == pytest.approx(4.0)
    assert s.mean_ms == pytest.approx(2.5)
    assert lt.LatencySummary.of([]).count == 0


def test_summary_excludes_warmup_and_counts_errors_by_code() -> None:
    cfg = lt.LoadConfig(target="127.0.0.1:1", rate=10, duration_s=2.0, warmup_s=1.0)
    rec = lt.Recorder(warmup_s=1.0)
    cold = lt.RequestSpec(kind="cold", user_id="c", candidates=("a", "b"), k=5)
    rec.record(0.5, SPEC, 9.0, "OK")  # warm-up: ignored, despite its huge latency
    rec.record(1.0, SPEC, 0.010, "OK")
    rec.record(1.5, cold, 0.020, "UNAVAILABLE")
    rec.record(2.0, SPEC, 0.030, "DEADLINE_EXCEEDED")
    rec.record(2.5, cold, 0.040, "OK")
    s = lt.summarize(rec, cfg, [])
    assert (s.requests, s.ok, s.errors) == (4, 2, 2)
    assert s.error_rate == pytest.approx(0.5)
    assert s.errors_by_code == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert s.latency.max_ms == pytest.approx(40.0)
    assert s.throughput_rps == pytest.approx(2.0)
    assert s.by_user_kind["cold"].requests == 2 and s.by_user_kind["cold"].errors == 1
    assert s.by_candidates["with candidates"].requests == 2
    assert lt.check_budgets(s, lt.Budgets(p99_ms=50, max_error_rate=0.5)) == []
    violations = lt.check_budgets(s, lt.Budgets(p99_ms=10, max_error_rate=0.01))
    assert len(violations) == 2 and "p99" in violations[0] and "error rate" in violations[1]
    text = lt.format_summary(s, violations, lt.Budgets(p99_ms=10, max_error_rate=0.01))
    assert "FAIL" in text and "UNAVAILABLE 1" in text
    json_ready = lt.to_jsonable(s)
    assert json_ready["latency"]["count"] == 4


def test_empty_run_breaks_the_budget() -> None:
    cfg = lt.LoadConfig(target="127.0.0.1:1", duration_s=1.0, warmup_s=0.0)
    s = lt.summarize(lt.Recorder(0.0), cfg, [])
    assert lt.check_budgets(s, lt.Budgets()) == ["no request completed in the measured window"]
    assert lt.to_jsonable(s)["latency"]["p99_ms"] is None  # NaN is not JSON


def test_uniform_schedule_is_exact() -> None:
    offsets = list(lt.arrival_offsets(100.0, 2.0))
    assert len(offsets) == 200
    assert offsets[0] == 0.0 and offsets[1] == pytest.approx(0.01)
    assert offsets[-1] == pytest.approx(1.99)
    assert all(b > a for a, b in zip(offsets, offsets[1:], strict=False))
    assert len(list(lt.arrival_offsets(3.0, 1.0))) == 3


def test_poisson_schedule_has_the_requested_mean_rate() -> None:
    offsets = list(lt.arrival_offsets(1000.0, 10.0, "poisson", random.Random(1)))
    assert 9500 < len(offsets) < 10500
    assert all(0 <= o < 10.0 for o in offsets)
    with pytest.raises(ValueError):
        list(lt.arrival_offsets(0.0, 1.0))


def test_open_loop_keeps_the_rate_while_the_server_is_slow() -> None:
    """Requests go out on schedule even though each takes 5 request intervals to answer."""

    async def slow(_spec):
        await asyncio.sleep(0.1)
        return "OK"

    cfg = lt.LoadConfig(target="x", rate=50, duration_s=0.6, warmup_s=0.0)
    rec, _ = asyncio.run(lt.run_load(cfg, slow, lambda: SPEC))
    assert len(rec.codes) == 30
    assert max(rec.offsets) == pytest.approx(0.58)
    assert min(rec.latencies) >= 0.099


def test_open_loop_measures_from_the_intended_send_time() -> None:
    """A stall (here: the client's event loop blocked for 0.3 s) is charged to every request
    that should have been sent during it: no coordinated omission."""
    calls = {"n": 0}

    async def stalls_once(_spec):
        calls["n"] += 1
        if calls["n"] == 5:
            time.sleep(0.3)  # blocks everything, like a GC pause or a saturated client
        return "OK"

    cfg = lt.LoadConfig(target="x", rate=100, duration_s=0.5, warmup_s=0.0)
    rec, _ = asyncio.run(lt.run_load(cfg, stalls_once, lambda: SPEC))
    assert len(rec.codes) == 50
    delayed = [lat for off, lat in zip(rec.offsets, rec.latencies, strict=True) if 0.05 < off < 0.3]
    assert len(delayed) >= 20
    # the request due right after the stall began waited nearly the whole stall
    assert max(delayed) >= 0.2
    # a closed-loop measurement would have seen at most one slow request
    assert sum(1 for lat in rec.latencies if lat > 0.1) >= 10


def test_closed_loop_keeps_concurrency_in_flight() -> None:
    inflight = {"now": 0, "max": 0}

    async def tracked(_spec):
        inflight["now"] += 1
        inflight["max"] = max(inflight["max"], inflight["now"])
        await asyncio.sleep(0.02)
        inflight["now"] -= 1
        return "OK"

    cfg = lt.LoadConfig(target="x", mode="closed", concurrency=4, duration_s=0.3, warmup_s=0.0)
    rec, _ = asyncio.run(lt.run_load(cfg, tracked, lambda: SPEC))
    assert inflight["max"] == 4
    assert 20 <= len(rec.codes) <= 64


def test_open_loop_reports_a_saturated_client() -> None:
    async def hang(_spec):
        await asyncio.sleep(0.5)
        return "OK"

    cfg = lt.LoadConfig(target="x", rate=200, duration_s=0.2, warmup_s=0.0, max_outstanding=5)
    rec, _ = asyncio.run(lt.run_load(cfg, hang, lambda: SPEC))
    assert rec.codes.count("CLIENT_SATURATED") == 35
    assert rec.codes.count("OK") == 5


def test_workload_classes_users_from_the_features_file(tmp_path: Path) -> None:
    features = tmp_path / "features.tsv"
    features.write_text(
        "user_id\tdomain\titem_id\ttimestamp\n"
        "u1\tsource\ts1\t1\n"
        "u1\ttarget\tt1\t2\n"
        "u2\tsource\ts2\t3\n"
        "u3\ttarget\tt2\t4\n"
    )
    w = lt.Workload.from_features(features)
    assert w.warm_users == ("u1", "u3")
    assert w.cold_users == ("u2",)
    assert set(w.items) == {"t1", "t2"}
    mix = lt.TrafficMix(warm=1, cold=1, unknown=1, candidate_share=0.5, candidates=5)
    rng = random.Random(0)
    specs = [w.sample(rng, mix) for _ in range(600)]
    kinds = {k: sum(s.kind == k for s in specs) for k in ("warm", "cold", "unknown")}
    assert all(150 < n < 250 for n in kinds.values()), kinds
    assert all(s.user_id in w.warm_users for s in specs if s.kind == "warm")
    assert all(s.user_id == "u2" for s in specs if s.kind == "cold")
    assert all(s.user_id.startswith("loadtest-unknown-") for s in specs if s.kind == "unknown")
    with_c = [s for s in specs if s.candidates]
    assert 200 < len(with_c) < 400
    assert all(set(s.candidates) <= {"t1", "t2"} and len(s.candidates) == 2 for s in with_c)
    with pytest.raises(ValueError, match="cold-start"):
        lt.Workload(("u1",), (), ("t1",)).check(lt.TrafficMix(warm=1, cold=1, unknown=0))


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50053", True),
        ("localhost:50053", True),
        ("[::1]:50053", True),
        ("dns:///localhost:50053", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("unix:/tmp/ranker.sock", True),
        ("10.0.0.5:50053", False),
        ("192.168.1.1:50053", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
        ("[2001:db8::1]:50053", False),
        ("no-such-host.invalid:50053", False),
    ],
)
def test_only_loopback_targets_are_allowed(target: str, local: bool) -> None:
    assert lt.is_loopback_target(target) is local


def test_cli_refuses_remote_targets_without_allow_remote(capsys) -> None:
    assert lt.main(["--target", "10.0.0.5:50053"]) == lt.EXIT_USAGE
    assert "--allow-remote" in capsys.readouterr().err
    assert lt.main(["--find-max-rate"]) == lt.EXIT_USAGE  # needs --p99-budget-ms
