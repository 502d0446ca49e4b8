"""The loss step of one optimizer step: global counts, each micro-batch's loss, the metric sums.

    counts = step_counts(micro)            1 all-reduce: the step's global token/sample/class counts
    (rho1: select = rho1_select(...)       no-grad forwards of the model and the reference, 2 collectives
                                           to agree on the step's excess-loss threshold)
    for each micro-batch:
        ce = engine(...)                   per-token CE at loss positions (TokenLossModel)
        out = micro_loss(ce, mb, counts)   the loss to backpropagate + its metric parts (pure; batch
                                           granularity does 1 all-reduce of 4 class sums through `reduce`)
        sums.add(ce, classes, out)
    sums.all_reduced(reduce)               1 all-reduce: the step's metric sums
    metrics_row(...)                       one line of metrics.jsonl

How the loss is normalised so that the gradient is that of the global batch is in rft_ds/losses.py.
`micro_loss` and `MetricSums` need no process group (the benchmark of RFT's own cost calls them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rft_ds.losses import (BOILERPLATE, REASONING, class_sums, dft_token_loss, rft_batch_micro, rft_per_sample,
                           rho1_threshold)
from rft_ds.masks import UNMASKED


@dataclass
class LossSpec:
    """What the loss needs of the run's config."""
    loss: str = "sft"                 # sft | rft | weighted | dft | rho1
    granularity: str = "sample"       # RFT and weighted: sample | batch
    tau: float = 2.0
    detach_weights: bool = True
    w_reasoning: float = 0.5          # weighted: (w_b, w_r) = (1 - w_reasoning, w_reasoning)
    keep_ratio: float = 0.6           # rho1: the share K of the global batch's tokens trained on

    @classmethod
    def of(cls, cfg) -> "LossSpec":
        return cls(cfg.loss, cfg.rft_granularity, cfg.tau, cfg.detach_weights, cfg.w_reasoning, cfg.keep_ratio)

    @property
    def fixed_w_r(self) -> float | None:
        """The constant reasoning weight of `weighted`; None: RFT's softmax weights."""
        return self.w_reasoning if self.loss == "weighted" else None


@dataclass
class StepCounts:
    """Global counts of one optimizer step (every rank, every micro-batch), from one all-reduce."""
    tokens: float = 0.0           # loss tokens
    samples: float = 0.0          # samples with loss tokens
    tokens_b: float = 0.0         # boilerplate loss tokens
    tokens_r: float = 0.0         # reasoning loss tokens
    input_tokens: float = 0.0     # non-padding input tokens (throughput, MFU)
    input_sq: float = 0.0         # sum of squared sample lengths (attention FLOPs)


def local_counts(micro: list, device) -> torch.Tensor:
    """This rank's StepCounts as a float64 tensor on `device` (all-reduce it to get the step's)."""
    cnt = torch.zeros(len(fields(StepCounts)), dtype=torch.float64, device=device)
    for mb in micro:
        cnt[0] += mb.targets.numel()
        cnt[1] += torch.unique(mb.seg).numel()
        cnt[2] += (mb.classes == BOILERPLATE).sum()
        cnt[3] += (mb.classes == REASONING).sum()
        lens = mb.attention_mask.sum(1).double()
        cnt[4] += lens.sum()
        cnt[5] += (lens * lens).sum()
    return cnt


@dataclass
class MicroLoss:
    loss: torch.Tensor            # what this rank backpropagates (scaled by W, see losses.py)
    objective: torch.Tensor       # this micro-step's share of the global objective (for the metric)
    w_b: torch.Tensor | float = 0.0   # RFT, weighted: sum of boilerplate weights over weighted samples
    w_r: torch.Tensor | float = 0.0
    weighted: torch.Tensor | float = 0.0  # RFT, weighted: how many weightings the sums hold


@dataclass
class Rho1Selection:
    """The step's Rho-1 selection: which loss tokens of each micro-batch train, agreed by every rank."""
    keep: list[torch.Tensor]      # per micro-batch: [tokens] bool, excess loss >= threshold
    threshold: float              # the step's excess-loss threshold T
    kept: int                     # tokens kept in the global batch (the loss's denominator)


def rho1_select(excess: list[torch.Tensor], keep_ratio: float, gather) -> Rho1Selection:
    """Select the global batch's top `keep_ratio` tokens by excess loss. `excess`: this rank's
    per-micro-batch [tokens] excess losses (CE - reference CE, detached); `gather(t)`: [W, n] of
    every rank's t (the same length on every rank: padded here with -inf)."""
    local = torch.cat([e.detach() for e in excess])
    thr, kept = rho1_threshold(gather(local), keep_ratio)
    return Rho1Selection([e >= thr for e in excess], thr, kept)


def micro_loss(ce: torch.Tensor, seg: torch.Tensor, classes: torch.Tensor, n_rows: int, counts: StepCounts,
               spec: LossSpec, world: int, reduce=None, keep: torch.Tensor | None = None, kept: int = 0
               ) -> MicroLoss:
    """The loss of one micro-batch given the step's global counts. `ce`: per-token CE at loss
    positions (row-major), `seg`: each token's row, `classes`: each token's class (-1 unlabeled,
    0 boilerplate, 1 reasoning, UNMASKED: trained with SFT). `reduce`: the all-reduce (sum) that
    the batch granularity needs for its 4 class sums; every rank calls it once per micro-step.
    rho1: `keep` is this micro-batch's selection and `kept` the global batch's selected tokens."""
    W, N, S = world, max(counts.tokens, 1.0), max(counts.samples, 1.0)
    if spec.loss in ("sft", "dft"):
        part = (dft_token_loss(ce) if spec.loss == "dft" else ce).sum()
        return MicroLoss(part * (W / N), part.detach() / N)
    if spec.loss == "rho1":
        part, K = (ce * keep).sum(), max(float(kept), 1.0)
        return MicroLoss(part * (W / K), part.detach() / K)
    if spec.granularity == "sample":
        cls = torch.where(classes == UNMASKED, torch.zeros_like(classes), classes)
        per, w_b, w_r, _ = rft_per_sample(ce, seg, cls, n_rows, spec.tau, spec.detach_weights, spec.fixed_w_r)
        both = _rows_with_both_classes(seg, cls, n_rows)
        return MicroLoss(per.sum() * (W / S), per.detach().sum() / S,
                         w_b.detach()[both].sum(), w_r.detach()[both].sum(), both.sum())
    cs = class_sums(ce, classes)
    g = reduce(cs.detach().clone().double()).to(cs.dtype)
    lm, w_b, w_r = rft_batch_micro(cs, g, counts.tokens_b, counts.tokens_r, spec.tau, spec.detach_weights,
                                   spec.fixed_w_r)
    # the objective has the same value on every rank: the sum over ranks counts it once
    return MicroLoss(lm * W, lm.detach() / W, w_b.detach() / W, w_r.detach() / W, 1.0 / W)


def _rows_with_both_classes(seg: torch.Tensor, classes: torch.Tensor, n_rows: int) -> torch.Tensor:
    """[n_rows] bool: rows holding tokens of both classes (the samples whose weights the metrics average)."""
    n_b = torch.bincount(seg[classes == BOILERPLATE], minlength=n_rows)
    n_r = torch.bincount(seg[classes == REASONING], minlength=n_rows)
    return (n_b > 0) & (n_r > 0)


class MetricSums:
    """This rank's metric sums over the step's micro-batches, kept on the engine's device (no
    host sync per micro-step) and all-reduced once per step into named floats."""
    NAMES = ("ce", "tokens", "ce_b", "ce_r", "objective", "w_b", "w_r", "weighted")

    def __init__(self, device):
        self.t = torch.zeros(len(self.NAMES), dtype=torch.float64, device=device)

    def add(self, ce: torch.Tensor, classes: torch.Tensor, out: MicroLoss) -> None:
        ce = ce.detach()
        cs = class_sums(ce, classes)
        for i, v in enumerate((ce.sum(), ce.numel(), cs[0], cs[2], out.objective, out.w_b, out.w_r, out.weighted)):
            self.t[i] += v

    def all_reduced(self, reduce) -> dict[str, float]:
        return dict(zip(self.NAMES, reduce(self.t).tolist()))


def metrics_row(counts: StepCounts, sums: dict[str, float], spec: LossSpec, has_classes: bool) -> dict:
    """The loss columns of one metrics.jsonl row (the loop adds step, lr, timing)."""
    N, NB, NR = max(counts.tokens, 1.0), counts.tokens_b, counts.tokens_r
    plain = spec.loss == "sft"
    row = {"loss": sums["ce"] / N if plain else sums["objective"]}
    if not plain:  # the objective is not the token-mean CE: keep that one too
        row["sft_loss"] = sums["ce"] / N
    if has_classes:
        row.update(loss_b=sums["ce_b"] / NB if NB else None, loss_r=sums["ce_r"] / NR if NR else None,
                   tokens_b=int(NB), tokens_r=int(NR))
    if spec.loss in ("rft", "weighted"):
        k = sums["weighted"]
        row.update(w_b=sums["w_b"] / k if k else None, w_r=sums["w_r"] / k if k else None)
    if spec.loss == "rho1":  # the share of loss tokens trained on, and the excess-loss threshold
        row.update(kept=sums["kept"] / N, excess_threshold=sums["excess_threshold"])
    return row
