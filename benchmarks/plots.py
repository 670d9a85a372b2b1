"""The PNG plots of ``compare.py``'s report, written next to ``latest.json``:

* ``throughput.png``: events/s per query, one panel per parallelism, grouped bars per engine (median, whiskers
  min-max), log scale;
* ``latency.png``: one row of panels per latency query, one column per percentile (p50, p99, p99.9), grouped
  bars per engine at each rate, log scale; "n/a" where a rate was not run, hatched bars for saturated runs;
* ``scaling.png``: one panel per query, events/s against cores: every engine measured at parallelism 1 and 2
  (solid), Headwater's projection to more nodes (dashed, labelled as such).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENGINE_ORDER = ("headwater", "bytewax", "flink", "pathway", "raydata", "python")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(engines: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {e: cmap(ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 9) for e in engines}


def plot_throughput(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    meta, summary = report["meta"], report["summary"]
    engines, queries, pars = list(meta["engines"]), list(meta["queries"]), list(meta["parallelism"])
    colors = _colors(engines)
    fig, axes = plt.subplots(1, len(pars), figsize=(6.5 * len(pars), 4.8), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(engines))
    for ax, p in zip(axes[0], pars):
        for k, engine in enumerate(engines):
            xs, ys, lo, hi = [], [], [], []
            for i, query in enumerate(queries):
                row = next((r for r in summary if r["engine"] == engine and r["query"] == query
                            and r["parallelism"] == p and "skipped" not in r), None)
                if row is None or not row["events_per_second"]["median"]:
                    continue
                eps = row["events_per_second"]
                xs.append(i + (k - (len(engines) - 1) / 2) * width)
                ys.append(eps["median"])
                lo.append(eps["median"] - eps["min"])
                hi.append(eps["max"] - eps["median"])
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=engine, color=colors[engine])
        ax.set_yscale("log")
        ax.set_xticks(range(len(queries)), queries)
        ax.set_title(f"parallelism {p}")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("input events/s (median, bars: min-max)")
    axes[0][-1].legend(fontsize=8)
    caps = ", ".join(f"{k} {v:,}" for k, v in meta["events_per_engine_query"].items() if v != meta["events"])
    fig.suptitle(f"Nexmark over the same Parquet events, {meta['events']:,} events"
                 + (f" (capped: {caps})" if caps else "") + f", median of {meta['repeat']} "
                 f"({meta['date_utc']}, {meta['machine'].get('cpus')} CPUs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    latency = report["latency"]
    cfg, results = latency["config"], latency["results"]
    engines = [e for e in ENGINE_ORDER if e in cfg["engines"]]
    colors = _colors(engines)
    keys = (("p50_ms", "p50"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"))
    queries, rates = cfg["queries"], cfg["rates"]
    fig, axes = plt.subplots(len(queries), len(keys), figsize=(15, 3.8 * len(queries)), squeeze=False)
    width = 0.8 / max(1, len(engines))
    for qi, query in enumerate(queries):
        for ki, (key, label) in enumerate(keys):
            ax = axes[qi][ki]
            for k, engine in enumerate(engines):
                for i, rate in enumerate(rates):
                    x = i + (k - (len(engines) - 1) / 2) * width
                    row = next((r for r in results if r["engine"] == engine and r["query"] == query
                                and int(r["rate"]) == int(rate)), None)
                    value = None if row is None or row.get("skipped") else row["latency_ms"].get(key)
                    if value is None:
                        ax.text(x, 0.012, "n/a", rotation=90, fontsize=6, ha="center", va="bottom",
                                color=colors[engine])
                        continue
                    ax.bar(x, max(value, 0.01), width, color=colors[engine],
                           hatch="//" if row.get("saturated") else None, edgecolor="black" if row.get("saturated")
                           else None, label=engine if i == 0 else None)
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.01)
            ax.set_xticks(range(len(rates)), [f"{r / 1000:g} k/s" for r in rates])
            ax.set_title(f"{query}: {label} latency", fontsize=10)
            ax.grid(axis="y", which="both", alpha=0.3)
            if ki == 0:
                ax.set_ylabel("ms (sink write - input due)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="upper right", fontsize=8)
    fig.suptitle(f"Latency at fixed input rates, parallelism 1, {cfg['seconds']:g} s of bids per run; q5: from "
                 "the event that closed the window; n/a: not run (saturated at a lower rate); hatched: "
                 "saturated", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    scaling = report["scaling"]
    queries = report["meta"]["queries"]
    engines = [e for e in ENGINE_ORDER if e in report["meta"]["engines"]]
    colors = _colors(engines)
    cols = 3
    rows = (len(queries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for qi, query in enumerate(queries):
        ax = axes[qi // cols][qi % cols]
        for engine in engines:
            pts = sorted((m["parallelism"], m["events_per_second"]) for m in scaling["measured"]
                         if m["engine"] == engine and m["query"] == query and m["events_per_second"])
            if pts:
                ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", color=colors[engine], label=engine)
        proj = next((p for p in scaling["projection"] if p["query"] == query), None)
        if proj is not None:
            cores = [proj["cores"][n] for n in proj["projected"]]
            ax.plot(cores, list(proj["projected"].values()), "s--", color=colors.get("headwater"), alpha=0.6,
                    label="headwater, projection")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = [1, 2] + (list(proj["cores"].values())[1:] if proj is not None else [])
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_title(query, fontsize=10)
        ax.set_xlabel("cores (1-2 measured, more: projected, 2 cores per node)")
        ax.grid(which="both", alpha=0.3)
        if qi % cols == 0:
            ax.set_ylabel("input events/s")
    for k in range(len(queries), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle("Scaling: measured at parallelism 1 and 2 on this machine; dashed = PROJECTION for Headwater "
                 f"({scaling['model']['formula']}), not a measurement", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(report: dict[str, Any], out_dir: Path) -> list[str]:
    written = []
    if report.get("summary"):
        plot_throughput(report, out_dir / "throughput.png")
        written.append(str(out_dir / "throughput.png"))
    if report.get("latency"):
        plot_latency(report, out_dir / "latency.png")
        written.append(str(out_dir / "latency.png"))
    if report.get("scaling") and report["scaling"].get("measured"):
        plot_scaling(report, out_dir / "scaling.png")
        written.append(str(out_dir / "scaling.png"))
    return written
