"""Which samples go into which optimizer step, micro-step and rank; padding to tensors.

The global batch of step s is fixed by the data, the seed, the epoch and the global batch size
G = world x micro x accumulation, so any split of the same G over ranks and micro-steps trains on
the same samples (what makes "1 rank x 4 x 1 == 2 ranks x 2 x 1" testable). Length grouping happens
inside "mega-batches" of several global batches (as Hugging Face's LengthGroupedSampler does), and
each global batch is sorted by length before it is cut into micro-batches, so padding stays small.

An incomplete last global batch is kept, not dropped: ranks whose share is empty run a dummy
micro-batch (a real sample with every loss token masked out) so every rank does the same number
of forward/backward passes and collectives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rft_ds.data.render import Encoded

DUMMY = -1  # a slot that holds a dummy (loss-free) sample


def global_batches(lengths: list[int], global_batch: int, seed: int, epoch: int, group_by_length: bool = True,
                   mega: int = 16) -> list[list[int]]:
    """The epoch's global batches (lists of sample indices), deterministic in (seed, epoch)."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = global_batch * mega
        grouped = []
        for s in range(0, len(order), span):
            grouped += sorted(order[s: s + span], key=lambda i: (-lengths[i], i))
        order = grouped
    batches = [order[s: s + global_batch] for s in range(0, len(order), global_batch)]
    if group_by_length:
        last = batches.pop() if len(batches[-1]) < global_batch else None
        rng.shuffle(batches)  # long batches not always first in a mega-batch
        if last is not None:
            batches.append(last)
    return batches


def split_global_batch(batch: list[int], lengths: list[int], world: int, micro: int, accum: int,
                       rank: int) -> list[list[int]]:
    """This rank's `accum` micro-batches of a global batch. The batch is sorted by length and cut
    in consecutive runs, so each micro-batch holds samples of similar length. Empty shares become
    [DUMMY]."""
    ordered = sorted(batch, key=lambda i: (-lengths[i], i))
    out = []
    for m in range(accum):
        start = (m * world + rank) * micro
        part = ordered[start: start + micro]
        out.append(part if part else [DUMMY])
    return out


@dataclass
class MicroBatch:
    input_ids: torch.Tensor       # [b, T]
    attention_mask: torch.Tensor  # [b, T]
    target_mask: torch.Tensor     # [b, T-1] bool: position t predicts token t+1, which is a loss token
    targets: torch.Tensor         # [N] the loss tokens, row-major
    classes: torch.Tensor         # [N] 0/1 label of each loss token, -1 if none
    seg: torch.Tensor             # [N] row (sample slot) of each loss token
    n_real: int                   # real (non-dummy) samples
    ids: list[str]

    def to(self, device):
        for k in ("input_ids", "attention_mask", "target_mask", "targets", "classes", "seg"):
            setattr(self, k, getattr(self, k).to(device))
        return self


def collate(samples: list[Encoded], pad_id: int, dummy: Encoded | None = None) -> MicroBatch:
    """Right-pad a micro-batch. `samples` may contain None for a dummy slot (uses `dummy` with no
    loss tokens)."""
    rows, real = [], []
    for s in samples:
        if s is None:
            rows.append(dummy)
            real.append(False)
        else:
            rows.append(s)
            real.append(True)
    T = max(len(r.input_ids) for r in rows)
    b = len(rows)
    ids = torch.full((b, T), pad_id, dtype=torch.long)
    att = torch.zeros((b, T), dtype=torch.long)
    loss_tok = torch.zeros((b, T), dtype=torch.bool)
    cls = torch.full((b, T), -1, dtype=torch.long)
    for i, (r, ok) in enumerate(zip(rows, real)):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        att[i, :n] = 1
        if ok:
            loss_tok[i, :n] = torch.tensor([m >= 0 for m in r.msg_index])
            if r.classes is not None:
                cls[i, :n] = torch.tensor(r.classes)
    loss_tok[:, 0] = False
    tmask = loss_tok[:, 1:]
    seg = torch.arange(b).unsqueeze(1).expand(b, T - 1)[tmask]
    return MicroBatch(input_ids=ids, attention_mask=att, target_mask=tmask, targets=ids[:, 1:][tmask],
                      classes=cls[:, 1:][tmask], seg=seg, n_real=sum(real),
                      ids=[r.id for r, ok in zip(rows, real) if ok])
