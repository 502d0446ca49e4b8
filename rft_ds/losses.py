"""Pure loss functions on tensors: token cross-entropy, SFT, RFT, fixed weights, DFT, Rho-1. No process
group needed. The five losses, their sources and flags: docs/losses.md.

Normalisation (why the global batch comes out exact):
  A global batch is every micro-batch of every data-parallel rank in one optimizer step.
  DeepSpeed averages the gradients over the W data-parallel ranks, and the engine calls
  `backward(loss, scale_wrt_gas=False)` so DeepSpeed does not also divide by the accumulation
  steps. So if rank r backpropagates, for micro-step m,
        loss_bwd = W * part_{r,m} / D,
  the gradient DeepSpeed applies is (1/W) sum_r sum_m W grad(part)/D = grad(sum part)/D:
  the gradient of the global-batch objective, whatever W, micro-batch size and GA are.
    SFT:          part = sum of token CE over the rank's loss tokens, D = loss tokens in the global batch.
    RFT sample:   part = sum over the rank's samples of  w_b^i L_b^i + w_r^i L_r^i,  D = samples in the
                  global batch (the paper's per-sample reading).
    RFT batch:    the class sums of micro-step m are all-reduced so every rank knows the global
                  S_b^m, n_b^m, S_r^m, n_r^m; w^m = softmax([S_b^m/n_b^m, S_r^m/n_r^m]/tau) and
                  loss_m = w_b^m S_b^m / N_b + w_r^m S_r^m / N_r with N_b, N_r the class token counts
                  of the whole step. Each rank evaluates loss_m on a "global surrogate"
                  S = s_local + stopgrad(S_global - s_local): same value on every rank, and summing the
                  ranks' gradients gives exactly d loss_m / d theta, also through w when weights are
                  not detached. Backward uses W * loss_m.
    Weighted:     RFT (sample or batch, D as there) with the constants (w_b, w_r) = (1 - A, A) of
                  --w-reasoning A in place of softmax([L_b, L_r]/tau). The rest is RFT's: a sample (batch:
                  a micro-step) without tokens of one class uses the other alone with weight 1, and
                  unlabeled tokens never count. In batch mode, when every micro-step holds both classes,
                  the step's loss is sum_m (1 - A) S_b^m / N_b + A S_r^m / N_r = (1 - A) L_b + A L_r over
                  the whole step, whatever the split into micro-steps (softmax weights, by contrast,
                  depend on each micro-step's means).
    DFT:          part = sum over the rank's loss tokens of  p_t CE_t  with p_t = exp(-CE_t) detached (the
                  model's probability of the target), D = loss tokens in the global batch (as SFT).
                  Since p grad(CE) = -grad(p), the gradient is that of -(sum_t p_t) / D.
    Rho-1:        x_t = CE_t - CE_ref_t (the excess loss over a reference model, both detached, from no-grad
                  forwards before the step's first backward); every rank gathers the step's x_t, so all
                  agree on the threshold T = the k-th largest, k = round(K N). part = sum of CE_t over the
                  rank's tokens with x_t >= T, D = the number of such tokens in the global batch (k, or
                  more where tokens tie with T): SFT over the selected tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BOILERPLATE, REASONING, UNLABELED = 0, 1, -1


def _chunk_ce(h: torch.Tensor, head, targets: torch.Tensor, transform) -> torch.Tensor:
    logits = head(h).float()
    if transform is not None:
        logits = transform(logits)
    return F.cross_entropy(logits, targets, reduction="none")


def n_head_calls(n_tokens: int, chunk: int) -> int:
    """Head calls `chunked_token_ce` makes for `n_tokens` loss tokens (at least 1: a rank without
    loss tokens still calls the head once, so ZeRO-3 sees the same modules on every rank)."""
    return max(1, -(-n_tokens // chunk))


def chunked_token_ce(hidden: torch.Tensor, head, targets: torch.Tensor, chunk: int = 1024,
                     calls: int | None = None, transform=None) -> torch.Tensor:
    """Cross-entropy (fp32, nats) of `targets` [N] given final hidden states [N, H] and the output
    head, `chunk` positions at a time.

    Memory: at most one chunk's [chunk, vocab] fp32 logits (and their log-softmax and gradient) are
    alive at once, in forward *and* backward: with autograd on and more than one chunk, each chunk
    runs under activation checkpointing, so backward recomputes that chunk's logits from the saved
    hidden states instead of keeping every chunk's log-softmax (N x vocab x 4 bytes, whatever the
    chunk size). The price is one more head forward per chunk (bench/fig7_loss_memory.py).

    Lockstep: the head is called `calls` times (default: as many as this rank needs); the extra
    calls are on empty chunks. Under ZeRO-3 each head call can all-gather the head's weights, so
    every rank must make the same number: the caller passes the maximum over the ranks.
    `transform` maps fp32 logits before the loss (an architecture's final-logit processing)."""
    n = hidden.shape[0]
    need = n_head_calls(n, chunk)
    calls = need if calls is None else calls
    if calls < need:
        raise ValueError(f"chunked_token_ce: {calls} head calls cannot cover {n} tokens in chunks of {chunk}")
    # One chunk: what backward keeps is one chunk's log-softmax anyway, so recomputing gains nothing.
    # `calls` is the same on every rank, so every rank makes the same choice (and head calls in backward).
    recompute = calls > 1 and torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    out = []
    for i in range(calls):
        h, t = hidden[i * chunk: (i + 1) * chunk], targets[i * chunk: (i + 1) * chunk]
        if recompute:
            from torch.utils.checkpoint import checkpoint

            out.append(checkpoint(_chunk_ce, h, head, t, transform, use_reentrant=False))
        else:
            out.append(_chunk_ce(h, head, t, transform))
    return torch.cat(out)


def class_sums(ce: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[sum_b, n_b, sum_r, n_r] of token losses by class (fp32, differentiable in the sums)."""
    b, r = classes == BOILERPLATE, classes == REASONING
    zero = ce.sum() * 0.0
    return torch.stack([zero + (ce * b).sum(), b.sum().to(ce.dtype), zero + (ce * r).sum(), r.sum().to(ce.dtype)])


def rft_combine(L_b: torch.Tensor, L_r: torch.Tensor, n_b: torch.Tensor, n_r: torch.Tensor, tau: float,
                detach: bool = True, fixed_w_r: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = w_b L_b + w_r L_r with (w_b, w_r) = softmax([L_b, L_r] / tau), elementwise, or the
    constants (1 - fixed_w_r, fixed_w_r) when `fixed_w_r` is given (`tau` and `detach` then unused).

    A class with no tokens (n == 0) drops out and the other gets weight 1; with no tokens at all the
    loss is 0 (still connected to the graph). Returns (loss, w_b, w_r)."""
    has_b, has_r = n_b > 0, n_r > 0
    lb = torch.where(has_b, L_b, torch.zeros_like(L_b))
    lr = torch.where(has_r, L_r, torch.zeros_like(L_r))
    has = torch.stack([has_b, has_r], dim=-1)
    if fixed_w_r is None:
        z = torch.stack([lb, lr], dim=-1) / tau
        z = z.masked_fill(~has, float("-inf"))
        z = torch.where(torch.isinf(z).all(dim=-1, keepdim=True), torch.zeros_like(z), z)  # no tokens at all
        w = torch.softmax(z, dim=-1) * (has_b | has_r).unsqueeze(-1)
        if detach:
            w = w.detach()
    else:
        one = torch.ones_like(lb.detach())
        w = torch.stack([torch.where(has_r, one * (1.0 - fixed_w_r), one),  # the other class missing: 1
                         torch.where(has_b, one * fixed_w_r, one)], dim=-1) * has
    w_b, w_r = w[..., 0], w[..., 1]
    return w_b * lb + w_r * lr, w_b, w_r


def rft_per_sample(ce: torch.Tensor, seg: torch.Tensor, classes: torch.Tensor, n_samples: int, tau: float,
                   detach: bool = True, fixed_w_r: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample RFT losses (the `sample` granularity): w_b^i L_b^i + w_r^i L_r^i with L_c^i the mean
    CE of sample i's class-c tokens and the weights of `rft_combine` (softmax, or fixed_w_r's).

    ce, seg, classes: [N] token losses, the sample slot of each token, and its class (0/1; -1 tokens
    are ignored). Returns (loss [S], w_b [S], w_r [S], has_tokens [S] bool)."""
    zeros = ce.new_zeros(n_samples)
    b, r = classes == BOILERPLATE, classes == REASONING
    sum_b = zeros.index_add(0, seg, ce * b)
    sum_r = zeros.index_add(0, seg, ce * r)
    n_b = zeros.detach().index_add(0, seg, b.to(ce.dtype))
    n_r = zeros.detach().index_add(0, seg, r.to(ce.dtype))
    loss, w_b, w_r = rft_combine(sum_b / n_b.clamp(min=1), sum_r / n_r.clamp(min=1), n_b, n_r, tau, detach,
                                 fixed_w_r)
    return loss, w_b, w_r, (n_b + n_r) > 0


def rft_batch_micro(local: torch.Tensor, global_: torch.Tensor, step_n_b: float, step_n_r: float, tau: float,
                    detach: bool = True, fixed_w_r: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `batch` granularity's loss for one micro-step (see module docstring); `fixed_w_r`: the
    constant weights of `rft_combine` instead of the softmax of the global class means.

    local: this rank's [sum_b, n_b, sum_r, n_r] (sums differentiable); global_: the same all-reduced
    over ranks (detached). step_n_b/step_n_r: class token counts of the whole optimizer step.
    Returns (loss_m, w_b, w_r); loss_m has the same value on every rank."""
    g = global_.detach()
    S_b = local[0] + (g[0] - local[0]).detach()
    S_r = local[2] + (g[2] - local[2]).detach()
    n_b, n_r = g[1], g[3]
    _, w_b, w_r = rft_combine(S_b / n_b.clamp(min=1), S_r / n_r.clamp(min=1), n_b, n_r, tau, detach, fixed_w_r)
    loss = w_b * S_b / max(step_n_b, 1.0) + w_r * S_r / max(step_n_r, 1.0)
    return loss, w_b, w_r


def dft_token_loss(ce: torch.Tensor) -> torch.Tensor:
    """DFT's per-token loss p_t CE_t with p_t = exp(-CE_t) detached: the target's probability as a
    constant weight (Wu et al. 2025, arXiv 2508.05629; TRL's loss_type="dft", LLaMA-Factory's
    use_dft_loss). Its gradient is p_t grad(CE_t) = -grad(p_t). [N] -> [N]."""
    return torch.exp(-ce.detach()) * ce


def rho1_keep_count(n_tokens: int, keep_ratio: float) -> int:
    """Tokens Rho-1 keeps of `n_tokens`: round(K N), at least 1 (none of none)."""
    if n_tokens <= 0:
        return 0
    return min(n_tokens, max(1, math.floor(keep_ratio * n_tokens + 0.5)))


def rho1_threshold(excess: torch.Tensor, keep_ratio: float) -> tuple[float, int]:
    """The global batch's Rho-1 selection from every token's excess loss (the step's, all ranks; -inf
    entries are padding and never count): (T, n_kept) with T the k-th largest excess, k =
    `rho1_keep_count`, and n_kept the tokens with excess >= T (ties with T are all kept). With no
    tokens: (inf, 0)."""
    x = excess.detach().flatten()
    n = int(torch.isfinite(x).sum())
    k = rho1_keep_count(n, keep_ratio)
    if k == 0:
        return math.inf, 0
    thr = float(torch.topk(x, k).values[-1])
    return thr, int((x >= thr).sum())
