"""The e2e benchmark's output: percentiles, the summary lines and the latency plot."""

from __future__ import annotations

from typing import Any

#: a response later than this counts as a timeout (it still counts in the percentiles)
TIMEOUT = 1.0


def pct(values: Any, q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 3)


def plot(path: str, lat_s: Any, fresh_s: list[float], title: str,
         windows: list[dict[str, float]] | None = None) -> None:
    """The e2e latency's histogram and distribution (with click freshness's), and with
    ``windows`` (:func:`devtools.e2e.measure.measure`'s ``e2e_windows``) its p50 and p99
    over the phase: a broker slowing as its partitions fill shows as a rising line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lat = np.sort(np.asarray(lat_s) * 1000)
    if windows:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.5))
        t = [w["t"] for w in windows]
        for q, style in (("p50", ":"), ("p99", "-")):
            ax3.plot(t, [w[f"{q}_ms"] for w in windows], style, marker=".",
                     color="tab:blue", label=f"e2e {q} of the responses read in the window")
        ax3.set_xlabel("s into the phase")
        ax3.set_ylabel("ms")
        ax3.set_ylim(bottom=0)
        ax3.grid(True, alpha=0.3)
        ax3.legend(loc="upper left", fontsize=8)
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(lat):
        hi = max(1.0, float(np.percentile(lat, 99.9)))
        ax1.hist(np.minimum(lat, hi), bins=100, color="tab:blue")
        ax1.set_yscale("log")
        ax2.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label="request -> response")
        for q, style in ((50, ":"), (99, "--")):
            ax2.axvline(np.percentile(lat, q), color="tab:blue", linestyle=style,
                        label=f"p{q} {np.percentile(lat, q):.1f} ms")
    if fresh_s:
        fr = np.sort(np.asarray(fresh_s) * 1000)
        ax2.plot(fr, np.arange(1, len(fr) + 1) / len(fr), color="tab:orange",
                 label="click -> reflecting response")
    ax1.set_xlabel("end-to-end latency, ms (clipped at p99.9)")
    ax1.set_ylabel("requests")
    ax2.set_xscale("log")
    ax2.set_xlabel("ms")
    ax2.set_ylabel("fraction")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def probes_moved(o: dict[str, Any]) -> str:
    """Why the phase's figures mix two settings, when the worker's recall monitor moved T
    between the end of the settle phase and the end of the measured one ("" if not): it
    steps T up whenever its recent samples' mean dips below the target, so a T settled
    close to the target can still move (devtools/e2e/settle.py)."""
    start, end = o.get("lsh_probes_start"), o.get("lsh_probes")
    if start is None or end is None or start == end:
        return ""
    return (f"the worker's probes moved during the phase (T={start:g} -> {end:g}): its "
            f"figures mix both settings")


def summary(o: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(f"\nend to end (client, request produced -> response consumed), {o['responses']} "
          f"responses: p50 {f(o['e2e_p50_ms'])} ms, p95 {f(o['e2e_p95_ms'])} ms, "
          f"p99 {f(o['e2e_p99_ms'])} ms, max {f(o['e2e_max_ms'])} ms", flush=True)
    if o.get("e2e_to_worker_p50_ms") is not None:
        print(f"  split at the worker's send (the response's Kafka timestamp): request sent -> "
              f"worker sent p50 {f(o['e2e_to_worker_p50_ms'])} / p99 "
              f"{f(o['e2e_to_worker_p99_ms'])} ms; worker sent -> response read p50 "
              f"{f(o['e2e_from_worker_p50_ms'])} / p99 {f(o['e2e_from_worker_p99_ms'])} ms",
              flush=True)
    print(f"throughput {o['throughput']}/s (offered {o['offered_rate']}/s); lost {o['lost']}, "
          f"errors {o['errors']}, timeouts (> {TIMEOUT:g}s) {o['timeouts']}, send errors "
          f"{o['send_errors']}; sources {o['sources']}", flush=True)
    print(f"worker: request p50 {f(o['worker_request_p50_ms'])} / p99 "
          f"{f(o['worker_request_p99_ms'])} ms; kafka-timestamp-to-sent p50 "
          f"{f(o['worker_e2e_p50_ms'])} / p99 {f(o['worker_e2e_p99_ms'])} ms; event-loop lag "
          f"p50 {f(o.get('worker_loop_lag_p50_ms'))} / p99 {f(o.get('worker_loop_lag_p99_ms'))}"
          f" ms; GC full collections {o.get('worker_gc_full_collections')} (mean "
          f"{f(o.get('worker_gc_full_mean_ms'))} ms), generation 1 "
          f"{o.get('worker_gc_gen1_collections')} (p99 {f(o.get('worker_gc_gen1_p99_ms'))} ms)"
          f"; Kafka timestamp -> fetched p50 {f(o.get('worker_kafka_p50_ms'))} / p99 "
          f"{f(o.get('worker_kafka_p99_ms'))} ms, fetched -> handled p50 "
          f"{f(o.get('worker_queued_p50_ms'))} / p99 {f(o.get('worker_queued_p99_ms'))} ms, "
          f"response sent -> acknowledged p50 {f(o.get('worker_delivery_p50_ms'))} / p99 "
          f"{f(o.get('worker_delivery_p99_ms'))} ms; candidates "
          f"mean {o['candidates_mean']}; clicks sent {o['clicks_sent']} "
          f"({o['click_rate_achieved']}/s), applied {o['clicks_applied']}", flush=True)
    print(f"freshness (click produced -> reflecting response), {o['freshness_probes']} probes: "
          f"p50 {f(o['freshness_p50_ms'])} ms, p99 {f(o['freshness_p99_ms'])} ms, done "
          f"{o['freshness_done']}, missed {o['freshness_missed']}; worker RSS peak "
          f"{o['worker_rss_peak_mb']} MB (at the end: anonymous {o.get('worker_rss_anon_mb')}"
          f" MB, mapped files {o.get('worker_rss_file_mb')} MB)", flush=True)
    print(f"LSH recall sampled by the worker against exact search: {o.get('lsh_recall_sampled')}"
          f" over {o.get('lsh_recall_samples')} answers; gauge at the end "
          f"{o.get('lsh_recall_gauge')} at T={o.get('lsh_probes')}", flush=True)
    moved = probes_moved(o)
    if moved:
        print(f"warning: {moved}", flush=True)
    if o.get("cpu_share"):
        used = ", ".join(f"{k} {v:.2f}" for k, v in o["cpu_share"].items() if v is not None)
        print(f"CPU over the measured phase, cores: {used}; each CPU busy "
              f"{o.get('cpu_busy')}" + (f"; py-spy profile {o['py_spy']}"
                                        if o.get("py_spy") else ""), flush=True)
        if o.get("worker_threads"):
            print("worker CPU per thread, cores: " + ", ".join(
                f"{k} {v:.3f}" for k, v in o["worker_threads"].items())
                + f"; of the worker's CPU, system (kernel) {o.get('worker_system')}; minor page "
                f"faults {o.get('worker_minor_faults_per_s')}/s", flush=True)
        if o.get("worker_cpu_ms_per_request") is not None:
            print(f"worker CPU per request answered (with the phase's clicks): "
                  f"{o['worker_cpu_ms_per_request']} ms", flush=True)
    if o.get("pin_worker") is not None:
        print(f"worker pinned alone on CPU {o['pin_worker']} of {o.get('cpus')}; load average "
              f"{o.get('loadavg_start')} -> {o.get('loadavg_end')}", flush=True)
