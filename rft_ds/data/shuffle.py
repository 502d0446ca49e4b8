"""SHAD's shuffled subset: (context -> assistant turn) pairs whose outputs are permuted across
samples with a derangement.

A conversation with k trained assistant turns gives k pairs; pair (s, i) has input
messages[:i] of sample s and output messages[i]. A random fraction of all pairs (at least 2) is
chosen, and their outputs are permuted so that no pair keeps an output from its own sample (which
also means no pair keeps its own output). The shuffled sample is the input of one pair followed by
the output of another; only that last message carries loss.
"""

from __future__ import annotations

import math
import random

from rft_ds.data.formats import Conversation
from rft_ds.errors import ConfigError


def all_pairs(convs: list[Conversation]) -> list[tuple[int, int]]:
    """(sample index, assistant message index) for every trained assistant turn."""
    return [(s, i) for s, c in enumerate(convs) for i in c.loss_message_indices()]


def cross_sample_derangement(owners: list[int], rng: random.Random) -> list[int]:
    """A permutation p of range(n) with owners[p[j]] != owners[j] for every j (so p[j] != j).

    Random shuffle, then repair: each conflicting position swaps its target with a position whose
    swap removes the conflict on both sides. Raises ConfigError if no such permutation exists (one
    sample owns more than half of the pairs)."""
    n = len(owners)
    counts: dict[int, int] = {}
    for o in owners:
        counts[o] = counts.get(o, 0) + 1
    if n < 2 or max(counts.values()) * 2 > n:
        raise ConfigError(f"cannot shuffle {n} pairs across samples: one sample owns "
                          f"{max(counts.values()) if counts else 0} of them; raise --shuffle-fraction")
    p = list(range(n))
    rng.shuffle(p)
    for _ in range(10 * n + 10):
        bad = [j for j in range(n) if owners[p[j]] == owners[j]]
        if not bad:
            return p
        for j in bad:
            if owners[p[j]] != owners[j]:
                continue
            cands = [k for k in range(n) if owners[p[k]] != owners[j] and owners[p[j]] != owners[k]]
            if cands:
                k = rng.choice(cands)
                p[j], p[k] = p[k], p[j]
    raise ConfigError("could not build a cross-sample derangement (please report this)")


def shuffled_subset(convs: list[Conversation], fraction: float, seed: int) -> tuple[list[Conversation], list[dict]]:
    """The shuffled training samples and the audit records (which input got which output)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--shuffle-fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    pairs = all_pairs(convs)
    # round(): 0.07 * 100 is 7.000000000000001 in floats, and must give 7 pairs, not 8.
    k = min(len(pairs), max(2, math.ceil(round(fraction * len(pairs), 9))))
    # Pairs in random order, at most k // 2 from any one sample: then a cross-sample derangement
    # of the chosen pairs exists whenever any k pairs admit one (a plain uniform draw could pick
    # too many turns of one long conversation and fail for an unlucky seed).
    cap, taken, chosen = k // 2, {}, []
    for j in rng.sample(range(len(pairs)), len(pairs)):
        if len(chosen) == k:
            break
        s = pairs[j][0]
        if taken.get(s, 0) < cap:
            taken[s] = taken.get(s, 0) + 1
            chosen.append(j)
    if len(chosen) < k:
        raise ConfigError(f"cannot shuffle {k} of {len(pairs)} pairs across samples: too many of them come "
                          "from one conversation; use another --shuffle-fraction or more samples")
    chosen.sort()
    sel = [pairs[j] for j in chosen]
    perm = cross_sample_derangement([s for s, _ in sel], rng)
    out, audit = [], []
    for j, (s, i) in enumerate(sel):
        so, io = sel[perm[j]]
        src, dst = convs[s], convs[so]
        msgs = [dict(m) for m in src.messages[:i]] + [dict(dst.messages[io])]
        sid = f"shuffled-{j:06d}"
        out.append(Conversation(id=sid, messages=msgs, path=src.path, line=src.line, train_messages=(len(msgs) - 1,)))
        audit.append({"id": sid, "input_id": src.id, "input_turn": i, "output_id": dst.id, "output_turn": io})
    return out, audit
