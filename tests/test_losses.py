"""rft_ds.losses against references computed by hand (plain Python math), not by the code under test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rft_ds.losses import (chunked_token_ce, class_sums, dft_token_loss, rft_batch_micro, rft_combine,
                            rft_per_sample)
from rft_ds.train.step import LossSpec

DT = torch.float64


# ------------------------------------------------------------------ plain-Python references

def softmax2(a: float, b: float, tau: float) -> tuple[float, float]:
    m = max(a, b) / tau
    ea, eb = math.exp(a / tau - m), math.exp(b / tau - m)
    return ea / (ea + eb), eb / (ea + eb)


def ref_rft(vals: list[float], classes: list[int], tau: float, detach: bool):
    """One group's RFT loss and d loss / d value for every token (python floats)."""
    b = [v for v, c in zip(vals, classes) if c == 0]
    r = [v for v, c in zip(vals, classes) if c == 1]
    if not b and not r:
        return 0.0, 0.0, 0.0, [0.0] * len(vals)
    if not b or not r:
        only = b or r
        L = sum(only) / len(only)
        wb, wr = (1.0, 0.0) if b else (0.0, 1.0)
        grad = [(1.0 / len(only)) if c == (0 if b else 1) else 0.0 for c in classes]
        return L, wb, wr, grad
    Lb, Lr = sum(b) / len(b), sum(r) / len(r)
    wb, wr = softmax2(Lb, Lr, tau)
    L = wb * Lb + wr * Lr
    # d L / d L_c = w_c (+ w_c (L_c - L) / tau through the softmax when not detached)
    gb = wb + (0.0 if detach else wb * (Lb - L) / tau)
    gr = wr + (0.0 if detach else wr * (Lr - L) / tau)
    grad = [gb / len(b) if c == 0 else gr / len(r) if c == 1 else 0.0 for c in classes]
    return L, wb, wr, grad


def ref_fixed(vals: list[float], classes: list[int], A: float):
    """One group's fixed-weight loss (w_b, w_r) = (1 - A, A), a missing class leaving the other
    alone with weight 1, and d loss / d value for every token (python floats)."""
    b = [v for v, c in zip(vals, classes) if c == 0]
    r = [v for v, c in zip(vals, classes) if c == 1]
    wb, wr = (1.0 - A, A) if b and r else (1.0 if b else 0.0, 1.0 if r else 0.0)
    L = (wb * sum(b) / len(b) if b else 0.0) + (wr * sum(r) / len(r) if r else 0.0)
    grad = [wb / len(b) if c == 0 else wr / len(r) if c == 1 else 0.0 for c in classes]
    return L, wb, wr, grad


def _f(x) -> float:
    return x.detach().item() if isinstance(x, torch.Tensor) else float(x)


def close(a, b, tol=1e-9):
    return abs(_f(a) - _f(b)) <= tol * max(1.0, abs(_f(b)))


# ------------------------------------------------------------------ rft_combine

@pytest.mark.parametrize("Lb,Lr,tau", [(1.2, 2.5, 2.0), (3.0, 0.4, 0.5), (0.7, 0.7, 3.0), (5.0, 1.0, 1e-3)])
def test_rft_combine_values_and_detached_grad(Lb, Lr, tau):
    lb = torch.tensor(Lb, dtype=DT, requires_grad=True)
    lr = torch.tensor(Lr, dtype=DT, requires_grad=True)
    one = torch.tensor(1.0, dtype=DT)
    loss, w_b, w_r = rft_combine(lb, lr, one, one, tau, detach=True)
    wb, wr = softmax2(Lb, Lr, tau)
    assert close(w_b, wb) and close(w_r, wr)
    assert close(loss, wb * Lb + wr * Lr)
    loss.backward()
    # detached weights: d loss / d L_b is exactly w_b
    assert lb.grad.item() == w_b.item() and lr.grad.item() == w_r.item()  # exactly the weights
    assert close(lb.grad, wb, 1e-12) and close(lr.grad, wr, 1e-12)
    assert not w_b.requires_grad and not w_r.requires_grad


@pytest.mark.parametrize("Lb,Lr,tau", [(1.2, 2.5, 2.0), (3.0, 0.4, 0.5), (0.2, 4.0, 1.0)])
def test_rft_combine_grad_through_softmax_when_not_detached(Lb, Lr, tau):
    lb = torch.tensor(Lb, dtype=DT, requires_grad=True)
    lr = torch.tensor(Lr, dtype=DT, requires_grad=True)
    one = torch.tensor(1.0, dtype=DT)
    loss, w_b, w_r = rft_combine(lb, lr, one, one, tau, detach=False)
    wb, wr = softmax2(Lb, Lr, tau)
    L = wb * Lb + wr * Lr
    assert close(loss, L)
    loss.backward()
    exp_b = wb + wb * (Lb - L) / tau
    exp_r = wr + wr * (Lr - L) / tau
    assert close(lb.grad, exp_b, 1e-12) and close(lr.grad, exp_r, 1e-12)
    # and it really differs from the detached gradient
    assert abs(exp_b - wb) > 1e-3


def test_rft_combine_missing_class_and_no_tokens_elementwise():
    Lb = torch.tensor([1.0, 2.0, 0.0, 0.5], dtype=DT, requires_grad=True)
    Lr = torch.tensor([3.0, 0.0, 0.0, 0.5], dtype=DT, requires_grad=True)
    n_b = torch.tensor([2.0, 5.0, 0.0, 0.0], dtype=DT)
    n_r = torch.tensor([0.0, 0.0, 0.0, 4.0], dtype=DT)
    for detach in (True, False):
        a, b = Lb.detach().clone().requires_grad_(), Lr.detach().clone().requires_grad_()
        loss, w_b, w_r = rft_combine(a, b, n_b, n_r, 2.0, detach)
        assert w_b.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert w_r.tolist() == [0.0, 0.0, 0.0, 1.0]
        assert loss.tolist() == [1.0, 2.0, 0.0, 0.5]
        loss.sum().backward()
        assert a.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert b.grad.tolist() == [0.0, 0.0, 0.0, 1.0]
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# ------------------------------------------------------------------ rft_per_sample

def _per_sample_case():
    # slot 0: mixed, with an ignored token; slot 1: boilerplate only; slot 2: no tokens at all;
    # slot 3: only unlabeled tokens; slot 4: reasoning only.
    vals = [0.5, 1.5, 2.0, 100.0, 0.3, 0.9, 7.0, 2.2, 0.1]
    seg = [0, 0, 0, 0, 1, 1, 3, 4, 4]
    cls = [0, 1, 1, -1, 0, 0, -1, 1, 1]
    return vals, seg, cls, 5


@pytest.mark.parametrize("detach", [True, False])
def test_rft_per_sample_against_reference(detach):
    vals, seg, cls, S = _per_sample_case()
    tau = 2.0
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    loss, w_b, w_r, has = rft_per_sample(ce, torch.tensor(seg), torch.tensor(cls), S, tau, detach)
    assert has.tolist() == [True, True, False, False, True]
    exp_grad = [0.0] * len(vals)
    for s in range(S):
        idx = [k for k in range(len(vals)) if seg[k] == s]
        L, wb, wr, g = ref_rft([vals[k] for k in idx], [cls[k] for k in idx], tau, detach)
        assert close(loss[s], L) and close(w_b[s], wb) and close(w_r[s], wr), s
        for k, gk in zip(idx, g):
            exp_grad[k] = gk
    loss.sum().backward()
    for k in range(len(vals)):
        assert close(ce.grad[k], exp_grad[k], 1e-12), (k, ce.grad[k].item(), exp_grad[k])
    # unlabeled tokens (even with a huge loss) never enter a loss
    assert ce.grad[3] == 0 and ce.grad[6] == 0


def test_rft_per_sample_empty_slot_is_zero_and_connected():
    vals, seg, cls, S = _per_sample_case()
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    loss, w_b, w_r, has = rft_per_sample(ce, torch.tensor(seg), torch.tensor(cls), S, 2.0, detach=False)
    for s in (2, 3):
        assert loss[s].item() == 0.0 and not has[s] and w_b[s] == 0 and w_r[s] == 0
    assert loss.requires_grad
    (loss[2] + loss[3]).backward()
    assert ce.grad is not None and torch.equal(ce.grad, torch.zeros_like(ce))


def test_rft_per_sample_all_empty_batch_still_backprops():
    ce = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    loss, _, _, has = rft_per_sample(ce, torch.tensor([0, 1]), torch.tensor([-1, -1]), 3, 2.0)
    assert loss.tolist() == [0.0, 0.0, 0.0] and not has.any()
    loss.sum().backward()
    assert torch.equal(ce.grad, torch.zeros(2, dtype=DT))


@pytest.mark.parametrize("c", [0, 1])
def test_rft_per_sample_single_class_gets_weight_one(c):
    vals = [0.2, 1.4, 3.1, 0.8]
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    loss, w_b, w_r, has = rft_per_sample(ce, torch.zeros(4, dtype=torch.long), torch.full((4,), c), 1, 2.0,
                                         detach=False)
    assert close(loss[0], sum(vals) / 4)
    assert (w_b[0].item(), w_r[0].item()) == ((1.0, 0.0) if c == 0 else (0.0, 1.0))
    loss.sum().backward()
    assert all(close(g, 0.25, 1e-12) for g in ce.grad.tolist())


def test_rft_per_sample_very_different_class_sizes():
    g = torch.Generator().manual_seed(0)
    vals = [4.0] + (torch.rand(100, generator=g, dtype=DT) * 2).tolist()
    cls = [0] + [1] * 100
    tau = 2.0
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    loss, w_b, w_r, _ = rft_per_sample(ce, torch.zeros(101, dtype=torch.long), torch.tensor(cls), 1, tau)
    L, wb, wr, grad = ref_rft(vals, cls, tau, True)
    assert close(loss[0], L) and close(w_b[0], wb) and close(w_r[0], wr)
    # the single boilerplate token has the higher loss, so its class gets most of the weight
    assert wb > 0.5
    loss.sum().backward()
    assert max(abs(a - b) for a, b in zip(ce.grad.tolist(), grad)) < 1e-12


def test_rft_per_sample_tau_limits():
    vals = [1.0, 1.0, 4.0, 2.0]  # L_b = 1, L_r = 3
    cls = torch.tensor([0, 0, 1, 1])
    seg = torch.zeros(4, dtype=torch.long)
    ce = torch.tensor(vals, dtype=DT)
    big, wb, wr, _ = rft_per_sample(ce, seg, cls, 1, 1e6)
    assert abs(big.item() - 2.0) < 1e-5 and abs(wb.item() - 0.5) < 1e-5  # mean of the two class means
    small, wb, wr, _ = rft_per_sample(ce, seg, cls, 1, 1e-3)
    assert small.item() == pytest.approx(3.0, abs=1e-12) and wr.item() == pytest.approx(1.0)  # the max class mean
    assert torch.isfinite(small).all()


def test_rft_per_sample_float32():
    vals, seg, cls, S = _per_sample_case()
    ce = torch.tensor(vals, dtype=torch.float32, requires_grad=True)
    loss, *_ = rft_per_sample(ce, torch.tensor(seg), torch.tensor(cls), S, 2.0)
    assert loss.dtype == torch.float32
    L0 = ref_rft(vals[:4], cls[:4], 2.0, True)[0]
    assert abs(loss[0].item() - L0) < 1e-6


# ------------------------------------------------------------------ class_sums

def test_class_sums():
    ce = torch.tensor([0.5, 1.5, 2.0, 9.0], dtype=DT, requires_grad=True)
    cs = class_sums(ce, torch.tensor([0, 1, 1, -1]))
    assert cs.tolist() == [0.5, 1.0, 3.5, 2.0]
    cs[0].backward()
    assert ce.grad.tolist() == [1.0, 0.0, 0.0, 0.0]
    empty = class_sums(torch.zeros(0, dtype=DT, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.tolist() == [0.0, 0.0, 0.0, 0.0] and empty.requires_grad


# ------------------------------------------------------------------ rft_batch_micro across simulated ranks

def _simulate_ranks(vals, cls, parts, tau, detach, dtype=DT, fixed_w_r=None):
    """Each 'rank' computes class_sums on its tokens; the global sums are their (detached) sum.
    Returns (per-rank loss values, summed gradient w.r.t. the shared per-token loss leaf)."""
    x = torch.tensor(vals, dtype=dtype, requires_grad=True)
    c = torch.tensor(cls)
    locs = [class_sums(x[torch.tensor(p, dtype=torch.long)], c[torch.tensor(p, dtype=torch.long)]) for p in parts]
    g = sum(l.detach() for l in locs)
    n_b, n_r = float(sum(1 for k in cls if k == 0)), float(sum(1 for k in cls if k == 1))
    values = []
    for loc in locs:
        loss, w_b, w_r = rft_batch_micro(loc, g, n_b, n_r, tau, detach, fixed_w_r)
        values.append(loss.item())
        loss.backward()  # gradients of all ranks add up in x.grad (DeepSpeed: W * loss, then mean)
    return values, x.grad.tolist()


SPLITS = {
    "halves": lambda n: [list(range(n // 2)), list(range(n // 2, n))],
    "interleaved": lambda n: [list(range(0, n, 2)), list(range(1, n, 2))],
    "one_rank_empty": lambda n: [list(range(n)), []],
    "one_token": lambda n: [[3], [k for k in range(n) if k != 3]],
}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("detach", [True, False])
def test_rft_batch_two_ranks_equal_single_process(split, detach):
    vals = [0.4, 2.3, 1.1, 0.2, 3.7, 0.9, 5.0, 1.6, 0.05, 2.8, 0.6, 1.9]
    cls = [0, 1, 0, 1, 1, -1, -1, 0, 0, 1, 0, 1]
    tau = 2.0
    L, _, _, grad = ref_rft(vals, cls, tau, detach)
    values, got = _simulate_ranks(vals, cls, SPLITS[split](len(vals)), tau, detach)
    assert values[0] == values[1]  # the same value on every rank, bit for bit
    assert abs(values[0] - L) < 1e-12
    assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-6
    assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-12  # float64: exact up to rounding
    assert got[5] == 0.0 and got[6] == 0.0


@pytest.mark.parametrize("detach", [True, False])
def test_rft_batch_two_ranks_float32(detach):
    g = torch.Generator().manual_seed(1)
    vals = (torch.rand(40, generator=g, dtype=DT) * 4).tolist()
    cls = torch.randint(-1, 2, (40,), generator=g).tolist()
    L, _, _, grad = ref_rft(vals, cls, 3.0, detach)
    values, got = _simulate_ranks(vals, cls, SPLITS["interleaved"](40), 3.0, detach, torch.float32)
    assert values[0] == values[1]
    assert abs(values[0] - L) < 1e-5
    assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-6


def test_rft_batch_rank_without_one_class():
    # rank 0 holds only boilerplate, rank 1 only reasoning: the global means still drive both.
    vals = [1.0, 2.0, 0.5, 4.0, 3.0]
    cls = [0, 0, 1, 1, 1]
    for detach in (True, False):
        L, _, _, grad = ref_rft(vals, cls, 2.0, detach)
        values, got = _simulate_ranks(vals, cls, [[0, 1], [2, 3, 4]], 2.0, detach)
        assert values[0] == values[1] and abs(values[0] - L) < 1e-12
        assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-12


def test_rft_batch_two_micro_steps_normalise_by_step_counts():
    # loss_m = w_b^m S_b^m / N_b + w_r^m S_r^m / N_r, N = counts of the whole step.
    steps = [([1.0, 3.0, 2.0], [0, 1, 1]), ([0.5, 0.7, 4.0, 1.0], [0, 0, 1, -1])]
    N_b = sum(c.count(0) for _, c in steps)
    N_r = sum(c.count(1) for _, c in steps)
    tau = 2.0
    for vals, cls in steps:
        x = torch.tensor(vals, dtype=DT, requires_grad=True)
        loc = class_sums(x, torch.tensor(cls))
        loss, w_b, w_r = rft_batch_micro(loc, loc.detach(), float(N_b), float(N_r), tau)
        b = [v for v, c in zip(vals, cls) if c == 0]
        r = [v for v, c in zip(vals, cls) if c == 1]
        wb, wr = softmax2(sum(b) / len(b), sum(r) / len(r), tau)
        assert close(loss, wb * sum(b) / N_b + wr * sum(r) / N_r)
        loss.backward()
        exp = [wb / N_b if c == 0 else wr / N_r if c == 1 else 0.0 for c in cls]
        assert max(abs(a - b) for a, b in zip(x.grad.tolist(), exp)) < 1e-12


# ------------------------------------------------------------------ chunked_token_ce

def _head_case(n, h=6, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
    hidden = torch.randn(n, h, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    return head, hidden, targets


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 100])
def test_chunked_token_ce_equals_full_cross_entropy(chunk):
    n = 7
    head, hidden, targets = _head_case(n)
    h1 = hidden.clone().requires_grad_()
    got = chunked_token_ce(h1, head, targets, chunk=chunk)
    got.sum().backward()
    g_w, g_h = head.weight.grad.clone(), h1.grad.clone()
    head.weight.grad = None
    h2 = hidden.clone().requires_grad_()
    ref = F.cross_entropy(head(h2).float(), targets, reduction="none")
    ref.sum().backward()
    assert got.shape == (n,) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    assert torch.allclose(g_w, head.weight.grad, atol=1e-6) and torch.allclose(g_h, h2.grad, atol=1e-6)
    # one position by hand: logsumexp(logits) - logits[target]
    logits = (hidden[2] @ head.weight.detach().T).tolist()
    m = max(logits)
    hand = m + math.log(sum(math.exp(z - m) for z in logits)) - logits[targets[2].item()]
    assert abs(got[2].item() - hand) < 1e-5


def test_chunked_token_ce_empty_is_connected():
    head, _, _ = _head_case(0)
    hidden = torch.zeros(0, 6, requires_grad=True)
    out = chunked_token_ce(hidden, head, torch.zeros(0, dtype=torch.long), chunk=4)
    assert out.shape == (0,) and out.requires_grad
    out.sum().backward()
    assert head.weight.grad is not None and torch.equal(head.weight.grad, torch.zeros_like(head.weight))


def test_chunked_token_ce_pads_to_the_given_head_calls_in_forward_and_backward():
    """Lockstep under ZeRO-3: `calls` head calls whatever this rank's token count, in forward and
    again in backward (each chunk is recomputed there), with the same values and gradients."""
    head, hidden, targets = _head_case(7)
    seen = []
    hook = head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    h1 = hidden.clone().requires_grad_()
    got = chunked_token_ce(h1, head, targets, chunk=3, calls=5)
    assert seen == [3, 3, 1, 0, 0]
    got.sum().backward()
    assert sorted(seen[5:]) == [0, 0, 1, 3, 3]  # backward recomputed every chunk, the empty ones too
    hook.remove()
    h2 = hidden.clone().requires_grad_()
    ref = F.cross_entropy(head(h2), targets, reduction="none")
    g_w = head.weight.grad.clone()
    head.weight.grad = None
    ref.sum().backward()
    assert torch.allclose(got, ref, atol=1e-6) and torch.allclose(h1.grad, h2.grad, atol=1e-6)
    assert torch.allclose(g_w, head.weight.grad, atol=1e-6)
    with pytest.raises(ValueError, match="cannot cover"):
        chunked_token_ce(hidden, head, targets, chunk=3, calls=2)


def test_chunked_token_ce_keeps_no_logits_for_backward():
    """What autograd saves for backward is the hidden states and targets, not N x vocab logits."""
    n, v = 64, 1000
    head, hidden, targets = _head_case(n, h=6, v=v)
    h = hidden.clone().requires_grad_()
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        chunked_token_ce(h, head, targets, chunk=8)
    one_chunk_logits = 8 * v * 4
    assert sum(saved) < one_chunk_logits, (sum(saved), one_chunk_logits)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):  # what plain chunking kept
        torch.cat([F.cross_entropy(head(h[s: s + 8]), targets[s: s + 8], reduction="none") for s in range(0, n, 8)])
    assert sum(saved) >= n * v * 4


def test_chunked_token_ce_applies_the_logit_transform():
    head, hidden, targets = _head_case(5)
    got = chunked_token_ce(hidden, head, targets, chunk=2, transform=lambda x: torch.tanh(x / 3.0) * 3.0)
    ref = F.cross_entropy(torch.tanh(head(hidden) / 3.0) * 3.0, targets, reduction="none")
    assert torch.allclose(got, ref, atol=1e-6)


# ------------------------------------------------------------------ fixed weights (--loss weighted)

@pytest.mark.parametrize("A", [0.0, 0.3, 0.5, 1.0])
def test_rft_combine_fixed_weights_and_missing_class(A):
    # both classes, boilerplate only, reasoning only, no tokens
    Lb = torch.tensor([1.2, 2.0, 0.0, 0.0], dtype=DT, requires_grad=True)
    Lr = torch.tensor([3.5, 0.0, 0.7, 0.0], dtype=DT, requires_grad=True)
    n_b = torch.tensor([2.0, 5.0, 0.0, 0.0], dtype=DT)
    n_r = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=DT)
    loss, w_b, w_r = rft_combine(Lb, Lr, n_b, n_r, tau=2.0, detach=False, fixed_w_r=A)
    assert w_b.tolist() == [1.0 - A, 1.0, 0.0, 0.0] and w_r.tolist() == [A, 0.0, 1.0, 0.0]
    for k, exp in enumerate([(1 - A) * 1.2 + A * 3.5, 2.0, 0.7, 0.0]):
        assert close(loss[k], exp, 1e-15)
    assert not w_b.requires_grad and not w_r.requires_grad  # constants, whatever `detach` says
    loss.sum().backward()
    assert Lb.grad.tolist() == [1.0 - A, 1.0, 0.0, 0.0] and Lr.grad.tolist() == [A, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("A", [0.0, 0.3, 1.0])
def test_rft_per_sample_fixed_weights_against_reference(A):
    vals, seg, cls, S = _per_sample_case()
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    loss, w_b, w_r, has = rft_per_sample(ce, torch.tensor(seg), torch.tensor(cls), S, 2.0, fixed_w_r=A)
    assert has.tolist() == [True, True, False, False, True]
    exp_grad = [0.0] * len(vals)
    for s in range(S):
        idx = [k for k in range(len(vals)) if seg[k] == s]
        L, wb, wr, g = ref_fixed([vals[k] for k in idx], [cls[k] for k in idx], A)
        assert close(loss[s], L) and close(w_b[s], wb) and close(w_r[s], wr), s
        for k, gk in zip(idx, g):
            exp_grad[k] = gk
    loss.sum().backward()
    assert max(abs(a - b) for a, b in zip(ce.grad.tolist(), exp_grad)) < 1e-12
    assert ce.grad[3] == 0 and ce.grad[6] == 0  # unlabeled tokens never count


@pytest.mark.parametrize("split", list(SPLITS))
def test_fixed_weights_batch_two_ranks_equal_single_process(split):
    vals = [0.4, 2.3, 1.1, 0.2, 3.7, 0.9, 5.0, 1.6, 0.05, 2.8, 0.6, 1.9]
    cls = [0, 1, 0, 1, 1, -1, -1, 0, 0, 1, 0, 1]
    L, _, _, grad = ref_fixed(vals, cls, 0.3)
    values, got = _simulate_ranks(vals, cls, SPLITS[split](len(vals)), 2.0, True, fixed_w_r=0.3)
    assert values[0] == values[1] and abs(values[0] - L) < 1e-12
    assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-12


# ------------------------------------------------------------------ DFT

def test_dft_token_loss_value_and_gradient():
    vals = [0.01, 0.5, 1.7, 4.0, 12.0]
    ce = torch.tensor(vals, dtype=DT, requires_grad=True)
    out = dft_token_loss(ce)
    assert all(close(o, math.exp(-v) * v, 1e-15) for o, v in zip(out.tolist(), vals))
    out.sum().backward()  # the probability is a constant weight: d/dce = p
    assert all(close(g, math.exp(-v), 1e-15) for g, v in zip(ce.grad.tolist(), vals))


def test_dft_gradient_is_that_of_minus_the_target_probability():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 9, generator=g, dtype=DT, requires_grad=True)
    targets = torch.randint(0, 9, (6,), generator=g)
    dft_token_loss(F.cross_entropy(logits, targets, reduction="none")).sum().backward()
    x = logits.detach().clone().requires_grad_()
    p = torch.exp(x - x.logsumexp(-1, keepdim=True)).gather(1, targets[:, None])  # softmax by hand
    (-p.sum()).backward()
    assert torch.allclose(logits.grad, x.grad, atol=1e-14, rtol=0)


# ------------------------------------------------------------------ micro_loss: one global batch, split or not

# rows of (value, class); the last row has no masks (--missing-masks sft: UNMASKED, sample mode only)
ROWS = [[(0.5, 0), (1.5, 1), (2.0, 1), (9.0, -1)], [(0.3, 0), (0.9, 0)], [(2.2, 1), (0.1, 1), (1.3, 0)],
        [(7.0, -1)], [(1.1, 1), (0.4, 0), (3.3, 1), (0.8, -1)], [(1.7, 2), (0.6, 2)]]
PIECES = [[[0, 1], [2]], [[3, 4], [5]]]  # rank -> micro-step -> rows; every micro-step holds both classes
SPECS = {"sft": LossSpec("sft"), "dft": LossSpec("dft"), "rft-sample": LossSpec("rft", "sample", 2.0),
         "weighted-sample": LossSpec("weighted", "sample", w_reasoning=0.3),
         "weighted-batch": LossSpec("weighted", "batch", w_reasoning=0.3)}


def _reference(name, rows, A=0.3):
    """The global batch's objective and d objective / d token value, from the plain-Python references."""
    vals = [v for row in rows for v, _ in row]
    N = len(vals)
    if name in ("sft", "dft"):
        p = [math.exp(-v) if name == "dft" else 1.0 for v in vals]
        return sum(pk * v for pk, v in zip(p, vals)) / N, [pk / N for pk in p]
    if name == "weighted-batch":  # both classes in every micro-step: (1 - A) L_b + A L_r of the step
        L, _, _, grad = ref_fixed(vals, [c for row in rows for _, c in row], A)
        return L, grad
    S, total, grad = sum(1 for row in rows if row), 0.0, []
    for row in rows:
        cls = [0 if c == 2 else c for _, c in row]
        vs = [v for v, _ in row]
        L, _, _, g = ref_fixed(vs, cls, A) if name.startswith("weighted") else ref_rft(vs, cls, 2.0, True)
        total, grad = total + L / S, grad + [gk / S for gk in g]
    return total, grad


def _run_pieces(spec, rows, pieces):
    """Every rank's every micro-step through micro_loss, gradients added as DeepSpeed does (mean over
    ranks of the backpropagated losses). Returns (sum of the objective parts, gradient)."""
    from rft_ds.train.step import StepCounts, micro_loss

    W, M = len(pieces), len(pieces[0])
    vals = [v for row in rows for v, _ in row]
    cls = torch.tensor([c for row in rows for _, c in row])
    row_of = [i for i, row in enumerate(rows) for _ in row]
    x = torch.tensor(vals, dtype=DT, requires_grad=True)
    counts = StepCounts(len(vals), sum(1 for row in rows if row), float((cls == 0).sum()), float((cls == 1).sum()))
    total = 0.0
    for m in range(M):
        here = [[k for k in range(len(vals)) if row_of[k] in pieces[r][m]] for r in range(W)]
        g = [0.0] * 4  # the all-reduced class sums of micro-step m, by hand
        for k in sum(here, []):
            c = int(cls[k])
            if c in (0, 1):
                g[2 * c] += vals[k]
                g[2 * c + 1] += 1
        for r in range(W):
            idx = torch.tensor(here[r], dtype=torch.long)
            seg = torch.tensor([pieces[r][m].index(row_of[k]) for k in here[r]], dtype=torch.long)
            out = micro_loss(x[idx], seg, cls[idx], len(pieces[r][m]), counts, spec, W,
                             lambda t: torch.tensor(g, dtype=torch.float64))
            (out.loss / W).backward()
            total += _f(out.objective)
    return total, x.grad.tolist()


@pytest.mark.parametrize("name", list(SPECS))
def test_micro_loss_split_equals_one_piece_and_reference(name):
    rows = ROWS[:-1] if name.endswith("batch") else ROWS
    pieces = [[[i for i in part if i < len(rows)] for part in rank] for rank in PIECES]
    L, grad = _reference(name, rows)
    for split in ([[list(range(len(rows)))]], pieces):  # one piece; 2 ranks x 2 micro-steps
        total, got = _run_pieces(SPECS[name], rows, split)
        assert abs(total - L) < 1e-12, (split, total, L)
        assert max(abs(a - b) for a, b in zip(got, grad)) < 1e-12, split


@pytest.mark.parametrize("A", [0.0, 0.3])
def test_weighted_metrics_row(A):
    from rft_ds.train.step import MetricSums, StepCounts, metrics_row, micro_loss

    vals = [v for row in ROWS for v, _ in row]
    cls = torch.tensor([c for row in ROWS for _, c in row])
    seg = torch.tensor([i for i, row in enumerate(ROWS) for _ in row])
    ce = torch.tensor(vals, dtype=DT)
    counts = StepCounts(len(vals), len(ROWS), float((cls == 0).sum()), float((cls == 1).sum()))
    spec = LossSpec("weighted", "sample", w_reasoning=A)
    sums = MetricSums("cpu")
    sums.add(ce, cls, micro_loss(ce, seg, cls, len(ROWS), counts, spec, 1))
    row = metrics_row(counts, sums.all_reduced(lambda t: t), spec, True)
    assert row["w_b"] == pytest.approx(1 - A, abs=1e-15) and row["w_r"] == pytest.approx(A, abs=1e-15)
    assert row["loss"] == pytest.approx(_reference("weighted-sample", ROWS, A)[0], abs=1e-12)
    assert row["sft_loss"] == pytest.approx(sum(vals) / len(vals), abs=1e-12)
    dft = metrics_row(counts, {**sums.all_reduced(lambda t: t), "objective": 0.25}, LossSpec("dft"), False)
    assert set(dft) == {"loss", "sft_loss"} and dft["loss"] == 0.25


# ------------------------------------------------------------------ the flags of the new losses

def test_weighted_and_dft_flags_and_checks():
    import argparse

    from rft_ds.config import TrainConfig
    from rft_ds.errors import ConfigError
    from rft_ds.train.cli import add_rft_flags

    p = argparse.ArgumentParser()
    add_rft_flags(p)
    a = p.parse_args(["--loss", "weighted", "--w-reasoning", "0.3", "--masks", "m.jsonl"])
    assert (a.loss, a.w_reasoning, p.parse_args([]).w_reasoning) == ("weighted", 0.3, 0.5)
    base = dict(model="m", data="d", output="o", max_steps=1)
    for kw, words in [(dict(loss="weighted"), "--loss weighted needs --masks"),
                      (dict(loss="weighted", masks="m", w_reasoning=1.5), "--w-reasoning must be in [0, 1]"),
                      (dict(loss="weighted", masks="m", w_reasoning=-0.1), "--w-reasoning must be in [0, 1]"),
                      (dict(loss="weighted", masks="m", rft_granularity="batch", missing_masks="sft"),
                       "--missing-masks sft"),
                      (dict(loss="focal"), "--loss must be one of")]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig(**base, **kw).check()
    for kw in (dict(loss="dft"), dict(loss="weighted", masks="m", w_reasoning=0.0, missing_masks="sft"),
               dict(loss="weighted", masks="m", w_reasoning=1.0, rft_granularity="batch")):
        TrainConfig(**base, **kw).check()
