"""End-to-end capacity benchmark: the highest rate each target sustains with p99 <= budget and
no errors, measured by one open-loop generator in one run.

Targets, in this order (``bench/capacity_benchmark.py``):

* ``ceiling``: ``grpc.health.v1.Health/Check`` on a bare ``grpc.aio`` server (no interceptors,
  ``bare_server.py``): the most this generator and this machine's gRPC can do per second, the
  denominator of every ratio;
* ``Recommend`` through ranker -> encoder -> scorer (the real services as processes) for a mixed
  traffic (``traffic.py``), once per feature store (in-memory, Redis) and per ranker variant
  (``--variant NAME=FLAGS``: e.g. with and without coalescing).

Each target: a short closed-loop probe estimates its throughput; open-loop steps then climb from a
share of it by a fixed factor until a step breaks the budget (p99 > budget, any error, or any
degraded answer), and bisection narrows the gap (``search.py``). The last passing rate is the
capacity; one more step at half of it gives the low-load p99. Latency counts from each request's
intended send time (``bench/loadtest.py``'s generator), so a server that falls behind cannot hide
it. Modules: ``traffic`` (requests and senders), ``stack`` (processes, RSS, Redis), ``search``
(probe, steps, CPU per request), ``report`` (JSON, markdown, plot).
"""
