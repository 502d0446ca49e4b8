"""`rft-ds plot`: per-class loss curves of training runs.

`RUN_DIR/metrics.jsonl` of each run (one JSON object per optimizer step: step, loss, and for
runs trained with masks loss_b/loss_r, the boilerplate/reasoning token mean losses) as side-by-side
panels: reasoning-token loss, boilerplate-token loss, total loss; one line per run. `--metrics`
draws other columns instead, e.g. the throughput ones (tokens_per_s, samples_per_s, step_time_s,
mfu), the RFT weights (w_r, w_b), grad_norm or lr: one panel each.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from rft_ds.errors import ConfigError, DataError
from rft_ds.fsio import atomic_write, iter_jsonl

PANELS = [("loss_r", "reasoning-token loss"), ("loss_b", "boilerplate-token loss"), ("loss", "total loss")]
# titles and y-axis labels of the other metrics.jsonl columns `--metrics` can draw (any numeric column works)
TITLES = {"tokens_per_s": ("throughput", "input tokens / s (all ranks)"),
          "samples_per_s": ("throughput", "samples / s (all ranks)"),
          "step_time_s": ("step time", "seconds per optimizer step"),
          "mfu": ("model FLOPs utilisation", "MFU (fraction of peak)"),
          "w_r": ("RFT weight of reasoning tokens", "w_r"), "w_b": ("RFT weight of boilerplate tokens", "w_b"),
          "grad_norm": ("gradient norm", "grad_norm"), "lr": ("learning rate", "lr")}


def read_metrics(run_dir: str) -> dict[int, dict]:
    """{step: row} from RUN_DIR/metrics.jsonl; a later row for a step (a resumed run) replaces the
    earlier one; an unterminated, unparsable last line (a run killed mid-write) is dropped."""
    d = Path(run_dir)
    path = d / "metrics.jsonl"
    if not d.is_dir():
        raise DataError(str(d), None, None, "run directory not found")
    if not path.is_file():
        raise DataError(str(path), None, None, "metrics file not found",
                        "a training run writes metrics.jsonl into its output directory as it trains")
    rows: dict[int, dict] = {}
    for lineno, row in iter_jsonl(path, lambda line, msg: DataError(str(path), line, None, msg), torn_tail_ok=True):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, None, f"each line must be a JSON object, got {type(row).__name__}")
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise DataError(str(path), lineno, "step", f"missing or not an int: {step!r}")
        rows[step] = row
    if not rows:
        raise DataError(str(path), None, None, "no metrics rows (has the run done an optimizer step yet?)")
    return dict(sorted(rows.items()))


def _series(rows: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for step, row in rows.items():
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(step)
            ys.append(float(v))
    return xs, ys


def moving_average(ys: list[float], k: int) -> list[float]:
    """Trailing mean over the last k points (fewer at the start)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _panel(key: str) -> tuple[str, str]:
    """(title, y label) of a metrics.jsonl column."""
    for k, title in PANELS:
        if k == key:
            return title, "mean token loss (nats)"
    title, ylabel = TITLES.get(key, (key, key))
    return (f"{title} ({key})" if title != key else key), ylabel


def plot_runs(run_dirs: list[str], output: str, labels: list[str] | None = None, smooth: int = 1,
              metrics: list[str] | None = None) -> dict:
    """Draw the runs' curves into `output`. Default panels: the per-class and total losses (the total
    only when no run has per-class losses); `metrics`: these metrics.jsonl columns instead, one panel
    each. Returns {"panels": [titles], "notes": [...], "series": {key: {label: (steps, values)}}}
    (the raw values drawn, before smoothing)."""
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"--labels has {len(labels)} label(s) for {len(run_dirs)} run dir(s)")
    if smooth < 1:
        raise ConfigError(f"--smooth must be >= 1 (1 = no smoothing), got {smooth}")
    runs = [read_metrics(d) for d in run_dirs]
    if labels is None:
        names = [Path(os.path.abspath(d)).name for d in run_dirs]
        labels = names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = (Path(output).suffix.lstrip(".").lower() or "png")
    has_cls = [bool(_series(r, "loss_r")[0] or _series(r, "loss_b")[0]) for r in runs]
    notes = []
    for d, lab, rows, cls in zip(run_dirs, labels, runs, has_cls):
        if not cls:
            notes.append(f"note: run {lab!r} has no loss_b/loss_r (trained without masks): total-loss panel only")
            if not _series(rows, "loss")[0]:
                raise DataError(str(Path(d) / "metrics.jsonl"), None, "loss", "no row has a numeric 'loss'")
    if metrics:
        notes = []
        panels = [(k, _panel(k)[0]) for k in metrics]
    else:
        panels = PANELS if any(has_cls) else PANELS[2:]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 0.4, 4.2), squeeze=False)
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise ConfigError(f"--output {output}: unsupported image type {fmt!r}; use .png, .svg or .pdf")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for ax, (key, title) in zip(axes[0], panels):
        drawn = 0
        series[key] = {}
        for n, (lab, rows) in enumerate(zip(labels, runs)):
            xs, ys = _series(rows, key)
            if not xs:
                continue
            series[key][lab] = (xs, ys)
            c = colors[n % len(colors)]
            if smooth > 1:
                ax.plot(xs, ys, color=c, alpha=0.22, linewidth=1)
                ax.plot(xs, moving_average(ys, smooth), color=c, linewidth=1.8, label=lab)
            else:
                ax.plot(xs, ys, color=c, linewidth=1.6, label=lab, marker="o" if len(xs) == 1 else None)
            drawn += 1
        ax.set_title(title)
        ax.set_ylabel(_panel(key)[1])
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8.5)
        else:
            ax.text(0.5, 0.5, "no run has this metric", ha="center", va="center", transform=ax.transAxes,
                    color="0.5")
    if metrics and not any(series.values()):
        plt.close(fig)
        raise DataError(str(Path(run_dirs[0]) / "metrics.jsonl"), None, ",".join(metrics),
                        "no run has a numeric value for any of these --metrics")
    if smooth > 1:
        fig.suptitle(f"moving average over {smooth} steps (raw values faint)", fontsize=9.5, color="0.35")
    fig.tight_layout()
    try:
        with atomic_write(output, "wb") as f:
            fig.savefig(f, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    for n in notes:
        print(n)
    print(f"wrote {output}: {len(runs)} run(s), panels: {', '.join(t for _, t in panels)}")
    return {"panels": [t for _, t in panels], "notes": notes, "series": series}


def run_plot(args) -> int:
    plot_runs(args.run_dirs, args.output, args.labels, args.smooth, args.metrics)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("plot", help="plot per-class (reasoning/boilerplate) and total loss curves of runs")
    q.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directories with metrics.jsonl")
    q.add_argument("--output", required=True, help="image to write (.png; .svg/.pdf also work)")
    q.add_argument("--labels", nargs="+", default=None, help="one legend label per RUN_DIR (default: dir names)")
    q.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default 1 = raw)")
    q.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                   help="draw these metrics.jsonl columns instead of the losses, one panel each, e.g. "
                        "tokens_per_s samples_per_s step_time_s mfu w_r grad_norm lr")
    q.set_defaults(func=run_plot)
