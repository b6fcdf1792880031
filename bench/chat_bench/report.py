"""The targets' verdicts and the printed report."""

from __future__ import annotations

from chat_bench.figures import (
    TARGET_CONNECTIONS,
    TARGET_CONNECTIONS_MB,
    TARGET_P50_RATIO,
    TARGET_P99_RATIO,
    TARGET_STARTUP_S,
    TARGET_THROUGHPUT_RATIO,
    Load,
    Report,
    Verdict,
)
from chat_bench.phases import PACE_S, PLATEAU_GAIN


def verdicts(report: Report) -> list[Verdict]:
    out: list[Verdict] = []
    lat = report.latency
    if lat is not None:
        out.append(
            Verdict(
                f"turn p50 <= {TARGET_P50_RATIO}x model p50",
                f"{lat.p50_ratio:.3f}x ({lat.turn_p50_ms:.1f} / {lat.model_p50_ms:.1f} ms)",
                lat.p50_ratio <= TARGET_P50_RATIO,
            )
        )
        out.append(
            Verdict(
                f"turn p99 <= {TARGET_P99_RATIO:g}x model p99",
                f"{lat.p99_ratio:.3f}x ({lat.turn_p99_ms:.1f} / {lat.model_p99_ms:.1f} ms)",
                lat.p99_ratio <= TARGET_P99_RATIO,
            )
        )
    thr = report.throughput
    if thr is not None:
        out.append(
            Verdict(
                f"throughput >= {TARGET_THROUGHPUT_RATIO}x batched model",
                f"{thr.ratio:.3f}x ({thr.messages_per_s:.1f} / {thr.model_messages_per_s:.1f} "
                "msg/s)",
                thr.ratio >= TARGET_THROUGHPUT_RATIO,
            )
        )
    con = report.connections
    if con is not None:
        scaled = con.delta_mb * TARGET_CONNECTIONS / con.connections
        value = f"{con.delta_mb:.1f} MB for {con.connections}"
        if con.connections != TARGET_CONNECTIONS:
            value += f" ({scaled:.1f} MB scaled to {TARGET_CONNECTIONS})"
        out.append(
            Verdict(
                f"{TARGET_CONNECTIONS} idle connections <= {TARGET_CONNECTIONS_MB:g} MB",
                value,
                scaled <= TARGET_CONNECTIONS_MB,
            )
        )
    start = report.startup
    if start is not None:
        worst = max(start.ready_s)
        out.append(
            Verdict(
                f"ready <= {TARGET_STARTUP_S:g} s after start",
                f"{worst:.1f} s (slowest of {len(start.ready_s)} starts)",
                worst <= TARGET_STARTUP_S,
            )
        )
    return out


def render(report: Report) -> str:
    lines: list[str] = []

    def section(title: str) -> None:
        lines.append("")
        lines.append(title)

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<34} {value}")

    def load(phase: Load) -> str:
        return f"load {phase.start:.2f} -> {phase.end:.2f}"

    m = report.machine
    kind = "quick run" if report.quick else "full run"
    if report.profile:
        kind += ", sampled by py-spy (which slows the server: read the shares, not the times)"
    lines.append(f"bench/chat.py, {kind}, {report.started_at}")
    row("machine", f"{m.cpu}, {m.cores} cores ({m.usable_cores} usable)")
    row("device", f"{m.device}, torch {m.torch}, {m.torch_threads} threads, Python {m.python}")
    start, end = report.load_start, report.load_end
    row(
        "load average (1/5/15 min)",
        f"start {start[0]:.2f} {start[1]:.2f} {start[2]:.2f}, "
        f"end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}",
    )
    for name, value in report.config.items():
        row(name, value)

    lat = report.latency
    if lat is not None:
        section(f"latency: one session, {lat.turns} turns after {lat.warmup_turns} warm-up")
        row(
            "turn p50 / p99 / mean",
            f"{lat.turn_p50_ms:.2f} / {lat.turn_p99_ms:.2f} / "
            f"{lat.turn_mean_ms:.2f} ms   ({load(lat.load)})",
        )
        row("ack p50", f"{lat.ack_p50_ms:.2f} ms   ({lat.frames_per_turn:.1f} frames a turn)")
        row(
            f"paced turns p50 / p99 ({PACE_S * 1000:.0f} ms pause)",
            f"{lat.paced_p50_ms:.2f} / {lat.paced_p99_ms:.2f} ms   (ratios "
            f"{lat.paced_p50_ms / lat.model_p50_ms:.2f} / "
            f"{lat.paced_p99_ms / lat.model_p99_ms:.2f})",
        )
        row(
            "model compute p50 / p99",
            f"{lat.model_p50_ms:.2f} / {lat.model_p99_ms:.2f} ms   "
            "(_read_batch, one message, alternating with the turns)",
        )
        for stage, ms in lat.stages_p50_ms.items():
            row(f"  {stage} p50", f"{ms:.2f} ms   ({load(lat.stages_load)})")
        row(
            "CPU per turn: server / its loop",
            f"{lat.server_cpu_ms:.2f} / {lat.event_loop_cpu_ms:.2f} ms; model alone "
            f"{lat.model_cpu_ms:.2f} ms",
        )
        row("turn p50 / model p50", f"{lat.p50_ratio:.2f}   (target <= {TARGET_P50_RATIO})")
        row("turn p99 / model p99", f"{lat.p99_ratio:.2f}   (target <= {TARGET_P99_RATIO:g})")

    thr = report.throughput
    if thr is not None:
        section(
            f"throughput: {thr.sessions} sessions, {thr.rounds} windows, "
            f"{thr.duration_s:.1f} s in all"
        )
        row(
            "server",
            f"{thr.messages_per_s:.1f} msg/s ({thr.messages} replies; "
            f"p50 {thr.turn_p50_ms:.0f} ms, p99 {thr.turn_p99_ms:.0f} ms; {load(thr.load)})",
        )
        exact = "exact" if thr.batch_sizes_exact else "bucket upper bounds"
        sizes = ", ".join(f"{s}x{n}" for s, n in thr.batch_sizes.items())
        row(f"turn batches (size x count, {exact})", sizes or "none")
        row("mean batch", f"{thr.mean_batch:.1f}")
        row(
            "server model workers",
            f"busy {thr.server_model_busy:.0%} of the window (summed), "
            f"{thr.server_model_s_per_item * 1000:.2f} ms per message",
        )
        row(
            "batched model alone",
            f"{thr.model_messages_per_s:.1f} msg/s at those sizes, after each window "
            "(the faster of one batch at a time and the server's batches in flight)",
        )
        row(
            "CPU per message: server / its loop",
            f"{thr.server_cpu_ms:.2f} / {thr.event_loop_cpu_ms:.2f} ms; model alone "
            f"{thr.model_cpu_ms:.2f} ms",
        )
        rest = (
            thr.server_cpu_ms - thr.server_model_cpu_ms - thr.store_cpu_ms - thr.event_loop_cpu_ms
        )
        row(
            "  of the server's: models / store",
            f"{thr.server_model_cpu_ms:.2f} / {thr.store_cpu_ms:.2f} ms; the rest {rest:.2f} ms",
        )
        row("server / model", f"{thr.ratio:.2f}   (target >= {TARGET_THROUGHPUT_RATIO})")

    con = report.connections
    if con is not None:
        section(f"connections: {con.connections} idle after hello, fresh server")
        row(
            "server RSS ready / with connections",
            f"{con.rss_ready_mb:.1f} / {con.rss_open_mb:.1f} MB   ({load(con.load)})",
        )
        row(
            "difference",
            f"{con.delta_mb:.1f} MB, {con.per_connection_kb:.1f} kB per connection "
            f"({con.marginal_kb:.1f} kB after the first tenth)",
        )
        row("time to open them", f"{con.open_s:.1f} s")

    st = report.startup
    if st is not None:
        section("startup (database already migrated)")
        row("spawn -> /readyz 200", ", ".join(f"{s:.1f} s" for s in st.ready_s))
        row("spawn -> 'listening' (speech too)", ", ".join(f"{s:.1f} s" for s in st.listening_s))
        row("server.py migrate", f"{st.migrate_s:.1f} s (fresh database, separate process)")

    for phase, prof in report.profile.items():
        section(
            f"py-spy, {phase} phase: {prof['samples']} busy samples, {prof['messages']} "
            "messages (share of the samples)"
        )
        for name, value in prof["categories"].items():
            row(name, f"{value['share']:4.0%}")
        for name, value in prof["threads"].items():
            row(f"[{name}]", f"{value['share']:4.0%}")

    if report.sweep is not None:
        section("model alone by batch size (_read_batch, messages/s)")
        for size, rate in report.sweep.messages_per_s.items():
            row(f"batch {size}", f"{rate:.1f}")
        row(
            "throughput stops growing at",
            f"batch {report.sweep.plateau} (within {PLATEAU_GAIN:.0%} of the best)",
        )

    section("verdict")
    for v in report.verdicts:
        row(v.target, f"{v.value}: {'ok' if v.ok else 'MISSED'}")
    return "\n".join(lines)
