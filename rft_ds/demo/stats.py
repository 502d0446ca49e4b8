"""The small statistics of `rft-ds demo-report`: ratios and means that are None when empty, the ROC
AUC of a score against a binary truth, and the spread of a metric over seeds."""

from __future__ import annotations

import math


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def roc_auc(scores, truth) -> float | None:
    """ROC AUC of `scores` for the positives of `truth` (1 = reasoning): the probability that a random
    positive scores higher than a random negative, ties counted one half (the Mann-Whitney U
    statistic over mid-ranks). None when a class is empty."""
    import numpy as np

    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=np.int64) == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # mid-rank (1-based) of every run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def spread(values: list) -> dict:
    """mean, sample std (n-1; None for one value), min, max over the non-None values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}

