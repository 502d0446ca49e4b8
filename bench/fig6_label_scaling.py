"""Figure 6: labeling time vs number of samples (1x, 2x, 4x of 300 demo samples) should be linear.

label_scaling_exponent = slope of log(label loop time) vs log(samples) (target 0.9 - 1.1). The
loop is label's own "(Xs)" figure (forward passes, records, chunk files); the whole command's wall
time has a fixed start-up part, so its log-log slope is below 1 by construction: we also report
it and a linear fit wall = fixed + per_sample x n.

    python bench/fig6_label_scaling.py [--reuse]
--reuse takes the 4x point from figure 3's label runs (same data, settings), as run_all.sh does.
"""

import argparse

import label_runs
from common import linear_fit, loglog_slope, median, save_figure, say

TARGET = "0.90..1.10"

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true")
    a = ap.parse_args()
    pts = {}
    for mult in (1, 2, 4):
        n = label_runs.n_for(mult)
        prev = label_runs.previous(n) if a.reuse else []
        runs = prev or [label_runs.label_once(n, "stock")]
        if not prev:
            label_runs.record(runs)
        pts[n] = {"loop_s": median([r["loop_s"] for r in runs]), "wall_s": median([r["wall_s"] for r in runs]),
                  "runs": len(runs)}
    ns = sorted(pts)
    exp_loop = loglog_slope(ns, [pts[n]["loop_s"] for n in ns])
    exp_wall = loglog_slope(ns, [pts[n]["wall_s"] for n in ns])
    fixed, per = linear_fit(ns, [pts[n]["wall_s"] for n in ns])
    lfixed, lper = linear_fit(ns, [pts[n]["loop_s"] for n in ns])
    detail = {"points": pts, "exponent_loop": exp_loop, "exponent_wall": exp_wall,
              "wall_fit": {"fixed_s": fixed, "per_sample_s": per}, "loop_fit": {"fixed_s": lfixed, "per_sample_s": lper},
              }
    save_figure("label_scaling_exponent", exp_loop, TARGET, detail)
    say(f"label_scaling_exponent = {exp_loop:.3f} (loop); wall exponent {exp_wall:.3f}, "
        f"wall = {fixed:.1f}s + {per * 1000:.1f}ms x samples")
