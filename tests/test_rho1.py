"""Rho-1 selective training (`--loss rho1`): the selection and the loss against plain references
(sorting in Python, the mean CE of the kept tokens by hand), with no process group. The real
launches are in tests/test_engine.py (split equivalence) and tests/test_cluster_correctness.py (the
whole gradient against plain Hugging Face forwards of the model and the reference)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rft_ds.losses import rho1_keep_count, rho1_threshold
from rft_ds.train.step import LossSpec, MetricSums, StepCounts, metrics_row, micro_loss, rho1_select

DT = torch.float64


def ref_keep(excess: list[float], K: float) -> list[bool]:
    """The plain reading: sort the excess losses descending, keep the first round(K N) and every
    token tied with the last one kept."""
    n = len(excess)
    k = min(n, max(1, math.floor(K * n + 0.5))) if n else 0
    if k == 0:
        return []
    t = sorted(excess, reverse=True)[k - 1]
    return [x >= t for x in excess]


@pytest.mark.parametrize("n,K,k", [(10, 0.6, 6), (7, 0.5, 4), (3, 0.1, 1), (5, 1.0, 5), (1, 0.01, 1), (0, 0.6, 0),
                                   (1000, 0.6, 600), (999, 0.7, 699)])
def test_keep_count_is_round_K_N_at_least_one(n, K, k):
    assert rho1_keep_count(n, K) == k


@pytest.mark.parametrize("seed", range(5))
def test_threshold_keeps_the_top_K_and_ignores_padding(seed):
    rnd = random.Random(seed)
    x = [rnd.gauss(0, 1) for _ in range(rnd.randint(1, 40))]
    K = rnd.choice([0.2, 0.5, 0.6, 0.9])
    padded = torch.tensor(x + [-math.inf] * rnd.randint(0, 7), dtype=torch.float32)
    thr, kept = rho1_threshold(padded, K)
    want = ref_keep([float(torch.tensor(v, dtype=torch.float32)) for v in x], K)
    assert kept == sum(want) == rho1_keep_count(len(x), K)
    assert [float(torch.tensor(v, dtype=torch.float32)) >= thr for v in x] == want


def test_threshold_keeps_every_tie_and_nothing_of_nothing():
    thr, kept = rho1_threshold(torch.tensor([0.5, 0.2, 0.2, 0.2, -1.0]), 0.4)  # k = 2: the 2nd is a 3-way tie
    assert (thr, kept) == (pytest.approx(0.2), 4)
    assert rho1_threshold(torch.tensor([-math.inf, -math.inf]), 0.6) == (math.inf, 0)
    assert rho1_threshold(torch.tensor([]), 0.6) == (math.inf, 0)


# ------------------------------------------------------------------ the loss over a split global batch

# the global batch: per rank, per micro-step, the token CEs of the model and of the reference
CE = [[[2.0, 0.7, 3.1], [1.2]], [[0.4, 2.6], [5.0, 0.9, 1.4, 0.2]]]
REF = [[[1.0, 0.9, 1.1], [1.5]], [[0.3, 0.6], [1.0, 1.0, 0.1, 0.5]]]


def _reference_loss(K: float) -> tuple[float, list[float]]:
    """Objective and d objective / d CE_t (t in rank-major, micro-step, token order), by hand."""
    ce = [v for rank in CE for mb in rank for v in mb]
    ref = [v for rank in REF for mb in rank for v in mb]
    keep = ref_keep([c - r for c, r in zip(ce, ref)], K)
    n = sum(keep)
    return sum(c for c, k in zip(ce, keep) if k) / n, [1.0 / n if k else 0.0 for k in keep]


def _run_split(K: float, pieces=CE) -> tuple[float, list[float], dict]:
    """Every rank's micro-steps through rho1_select (with a gather that stacks the ranks' padded
    excess vectors, as all_gather_padded does) and micro_loss; gradients added as DeepSpeed does."""
    W = len(pieces)
    x = [[torch.tensor(mb, dtype=DT, requires_grad=True) for mb in rank] for rank in pieces]
    ex = [[xi.detach() - torch.tensor(r, dtype=DT) for xi, r in zip(xr, rr)] for xr, rr in zip(x, REF)]
    locals_ = [torch.cat(e) for e in ex]
    n = max(t.numel() for t in locals_)

    def gather(_):  # [W, n]: every rank's excess, padded with -inf
        return torch.stack([torch.cat([t, torch.full((n - t.numel(),), -math.inf, dtype=DT)]) for t in locals_])

    sels = [rho1_select(ex[r], K, gather) for r in range(W)]
    assert len({(s.threshold, s.kept) for s in sels}) == 1  # every rank agrees
    N = sum(t.numel() for t in locals_)
    counts = StepCounts(N, N, 0.0, 0.0)
    spec, total, sums = LossSpec("rho1", keep_ratio=K), 0.0, MetricSums("cpu")
    for r in range(W):
        for m, xm in enumerate(x[r]):
            seg, cls = torch.zeros(xm.numel(), dtype=torch.long), torch.full((xm.numel(),), -1)
            out = micro_loss(xm, seg, cls, 1, counts, spec, W, keep=sels[r].keep[m], kept=sels[r].kept)
            (out.loss / W).backward()
            total += float(out.objective)
            sums.add(xm, cls, out)
    row = sums.all_reduced(lambda t: t)
    row.update(kept=float(sels[0].kept), excess_threshold=sels[0].threshold)
    return total, [g for rank in x for xm in rank for g in xm.grad.tolist()], metrics_row(counts, row, spec, False)


@pytest.mark.parametrize("K", [0.3, 0.6, 1.0])
def test_two_ranks_two_micro_steps_equal_the_plain_global_selection(K):
    L, grad = _reference_loss(K)
    total, got, row = _run_split(K)
    assert abs(total - L) < 1e-12 and max(abs(a - b) for a, b in zip(got, grad)) < 1e-12
    one = [[[v for rank in CE for mb in rank for v in mb]]]  # one rank, one micro-step: the same numbers
    global REF
    saved, REF = REF, [[[v for rank in REF for mb in rank for v in mb]]]
    try:
        total1, got1, _ = _run_split(K, one)
    finally:
        REF = saved
    assert abs(total1 - L) < 1e-12 and max(abs(a - b) for a, b in zip(got1, grad)) < 1e-12
    n_tok = sum(len(mb) for rank in CE for mb in rank)
    assert row["loss"] == pytest.approx(L, abs=1e-12) and row["kept"] == pytest.approx(sum(g > 0 for g in grad) / n_tok)
    assert row["sft_loss"] == pytest.approx(sum(v for rank in CE for mb in rank for v in mb) / n_tok, abs=1e-12)


def test_keep_ratio_one_is_sft():
    L, grad = _reference_loss(1.0)
    ce = [v for rank in CE for mb in rank for v in mb]
    assert L == pytest.approx(sum(ce) / len(ce), abs=1e-12) and set(grad) == {1 / len(ce)}


def test_a_rank_without_tokens_still_takes_part():
    """A rank whose micro-batch holds no loss token (a padded dummy) gathers an empty vector,
    keeps nothing and backpropagates a zero loss that is still connected to the graph."""
    empty = torch.zeros(0, dtype=DT, requires_grad=True)
    other = torch.tensor([0.5, -0.2, 0.9], dtype=DT)
    stacked = torch.stack([torch.full((3,), -math.inf, dtype=DT), other])
    sel = rho1_select([empty.detach()], 0.6, lambda t: stacked)
    assert sel.kept == 2 and sel.keep[0].numel() == 0
    out = micro_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 1,
                     StepCounts(3, 1), LossSpec("rho1", keep_ratio=0.6), 2, keep=sel.keep[0], kept=sel.kept)
    out.loss.backward()
    assert float(out.loss) == 0.0 and empty.grad is not None


def test_rho1_flags_and_checks():
    import argparse

    from rft_ds.config import TrainConfig
    from rft_ds.errors import ConfigError
    from rft_ds.train.cli import add_rft_flags

    p = argparse.ArgumentParser()
    add_rft_flags(p)
    a = p.parse_args(["--loss", "rho1", "--reference", "ref", "--keep-ratio", "0.7"])
    assert (a.loss, a.reference, a.keep_ratio, p.parse_args([]).keep_ratio) == ("rho1", "ref", 0.7, 0.6)
    base = dict(model="m", data="d", output="o", max_steps=1)
    for kw, words in [(dict(loss="rho1"), "--loss rho1 needs --reference"),
                      (dict(loss="sft", reference="r"), "--reference is used only with --loss rho1"),
                      (dict(loss="rho1", reference="r", keep_ratio=0.0), r"--keep-ratio must be in \(0, 1\]"),
                      (dict(loss="rho1", reference="r", keep_ratio=1.2), r"--keep-ratio must be in \(0, 1\]")]:
        with pytest.raises(ConfigError, match=words):
            TrainConfig(**base, **kw).check()
    TrainConfig(**base, loss="rho1", reference="r", keep_ratio=1.0).check()
