"""One benchmark run: the workload, in-process ONNX Runtime, then each server in turn.

Why one server at a time, in-process first: the in-process levels are the reference of every
ratio, and a server measured next to another would share its cores with it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from collections.abc import Callable
from typing import Any

from bench.serving.measure import (
    Level,
    attach_ratios,
    measure_ort,
    measure_server,
    ort_session,
)
from bench.serving.model import ensure_model
from bench.serving.peers import PeerSettings, Server, start_mlserver, start_scorer, start_torch
from bench.serving.report import format_text, machine_info, table_line, write_results
from bench.serving.workload import build_workload, predict_payloads, v2_payloads

BUSY_CORES_NOTE = 0.25  # other processes' CPU (cores) above which a level is flagged disturbed


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every system in ``args.systems``; writes and returns the result."""

    def say(line: str) -> None:
        print(line, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    subject = ensure_model(
        repo=args.repo,
        run=args.run,
        workdir=args.workdir,
        model=args.model,
        features=args.features,
        train_epochs=args.train_epochs,
        train_settings=getattr(args, "train_settings", ()),
    )
    repo, run_dir, model = subject.repo, subject.run, subject.model
    workload = build_workload(
        repo,
        model,
        subject.features,
        users=args.users,
        candidates=args.candidates,
        seed=args.seed,
        allow_repeats=getattr(args, "realistic", False),
    )
    desc = workload.describe()
    from services.common.model_repository import ModelRepository

    model_path = ModelRepository(repo).open(model, workload.version).model_path
    say(
        f"== serving benchmark: {model} v{workload.version} ({model_path}); request = 1 user "
        f"(real histories, median {desc['source_history_median']:.0f} source / "
        f"{desc['target_history_median']:.0f} target items) x {workload.candidates} candidates; "
        f"{len(workload.inputs)} distinct requests cycled; {desc['user_kinds']}"
    )
    say(
        f"   closed loop, {args.duration:g} s per level after {args.warmup:g} s warm-up; "
        f"concurrency {args.concurrency}; {os.cpu_count()} CPU cores shared by client and server; "
        f"{args.workers} inference workers x {args.intra_op_threads} intra-op thread(s) everywhere"
    )
    say(
        "   client: requests serialised up front, raw bytes on one grpc.aio channel, timed "
        "responses not parsed (its CPU per request is the 'cli CPU' column)"
    )
    providers = getattr(args, "providers", "cpu")
    session = ort_session(model_path, args.intra_op_threads, providers)
    session_used = session.get_providers()
    expected = [session.run(["scores"], x)[0] for x in workload.inputs[: args.check_requests]]
    payloads = {"predict": predict_payloads(workload), "v2": v2_payloads(workload)}
    levels: list[Level] = []
    notes: list[str] = []
    systems = args.systems
    say("")
    say(format_text([]))

    def record(level: Level) -> None:
        levels.append(level)
        say(table_line(level))

    in_process = [("ort-loop", 1)] if "ort-loop" in systems else []
    if "ort-pool" in systems:
        in_process += [("ort-pool", concurrency) for concurrency in args.concurrency]
    for system, concurrency in in_process:
        record(
            measure_ort(session, workload.inputs, system, concurrency, args.duration, args.warmup)
        )
    del session

    peers = PeerSettings(
        logs=args.out / "logs",
        workers=args.workers,
        intra_op_threads=args.intra_op_threads,
        mlserver_workers=args.mlserver_workers,
        scorer_access_log=args.scorer_access_log,
        scorer_args=tuple(args.scorer_arg),
        providers=providers,
    )
    starters: list[tuple[str, Callable[[], Server]]] = []
    if "scorer" in systems:
        starters.append(("scorer", lambda: start_scorer(peers, repo, model, False)))
        starters.append(("scorer+batch", lambda: start_scorer(peers, repo, model, True)))
    if "torch" in systems:
        if run_dir is None or not (run_dir / "model.pt").exists():
            notes.append("torch-eager skipped: no --run with model.pt")
        else:
            starters.append(("torch-eager", lambda: start_torch(peers, run_dir, model)))
    if "mlserver" in systems:
        starters.append(("mlserver", lambda: start_mlserver(peers, repo, model, args.out / "work")))
    servers_info = []
    for name, start in starters:
        try:
            server = start()
        except Exception as exc:  # noqa: BLE001 - one broken peer must not lose the others
            notes.append(f"{name}: failed to start: {str(exc).splitlines()[0]}")
            say(
                f"!! {name}: failed to start ({str(exc).splitlines()[0]}); log under {args.out}/logs"
            )
            continue
        if server.name.startswith("scorer"):
            server.apis = [a for a in server.apis if a in getattr(args, "apis", server.apis)]
        servers_info.append({"name": server.name, "address": server.address, "note": server.note})
        try:
            asyncio.run(
                measure_server(
                    server,
                    payloads,
                    expected,
                    concurrency=args.concurrency,
                    duration=args.duration,
                    warmup=args.warmup,
                    timeout_s=args.timeout_s,
                    report=record,
                )
            )
        finally:
            server.stop()

    attach_ratios(levels)
    busy = [lv for lv in levels if lv.other_cpu_cores > BUSY_CORES_NOTE]
    if busy:
        worst = max(busy, key=lambda lv: lv.other_cpu_cores)
        notes.append(
            f"{len(busy)} level(s) saw other processes use more than {BUSY_CORES_NOTE} cores "
            f"(worst: {worst.other_cpu_cores:.2f} cores during {worst.system}/{worst.api} at "
            f"concurrency {worst.concurrency}): those figures are disturbed; rerun on a quiet "
            "machine"
        )
    title = (
        f"{model} v{workload.version}"
        + (f" [{providers}]" if providers != "cpu" else "")
        + f": 1 user x {workload.candidates} candidates per request, "
        f"closed loop {args.duration:g} s/level, {os.cpu_count()} cores shared by client and server"
    )
    result = {
        "title": title,
        "request": desc,
        "settings": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "intra_op_threads": args.intra_op_threads,
            "mlserver_parallel_workers": args.mlserver_workers,
            "scorer_access_log": args.scorer_access_log,
            "timeout_s": args.timeout_s,
            "quick": args.quick,
            "realistic": getattr(args, "realistic", False),
            "providers": providers,
            "ort_providers_used": session_used,
            "model_path": str(model_path),
        },
        "machine": machine_info(),
        "servers": servers_info,
        "notes": notes,
        "levels": [dataclasses.asdict(lv) for lv in levels],
    }
    say("")
    say(format_text(levels))
    say(
        "x tput / x p50 / x p99: against in-process ONNX Runtime (ort-pool) at the same "
        "concurrency; max |d|: largest score difference from in-process ORT on the first "
        f"{len(expected)} requests"
    )
    for note in notes:
        say(f"note: {note}")
    write_results(args.out, result, levels)
    say(f"written: {args.out}/serving.json, serving.md, serving.png")
    return result
