"""The labeling pass's floor and a naive loop, on the same ranks and samples as `rft-ds label`.

Launched like label: `deepspeed --num_gpus 2 bench/label_floor_worker.py --base B --shad S --data D ...`.
Each rank takes exactly the samples `rft-ds label` gives it (rft_ds.label.chunks.plan_batches, batch j on
rank j % W) and computes the same per-token losses with plain PyTorch (a whole model per rank, no
ZeRO, no padding, no file I/O), timed between two barriers (so a variant's time is its slowest rank):

  floor_len     samples of exactly equal length batched together (up to --batch-size): no padding,
                few forward calls; logits only at loss positions (fp32); base, then SHAD model.
  floor_sample  each sample alone: no padding; logits only at loss positions.
  floor_batches label's own batches as rft_ds collates them (right-padded, attention mask): the same
                forward calls label makes, without ZeRO, engine, records or files.
  naive         each sample alone, full fp32 logits over the whole sequence, log_softmax, gather;
                base then SHAD model in turn: what one writes without thinking about it.

The floor is the faster of floor_len and floor_sample. On CPU each rank uses cores / local ranks
intra-op threads (--threads auto): the floor is the compute at its best, without the thread
oversubscription a plain `deepspeed` launch has (see BENCHMARKS.md). With --check-masks, rank 0 also checks that
its floor losses reproduce the masks file's loss_diff (LD = l_shad - l_base) of the label run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--shad", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--output", required=True, help="JSON with the timings (rank 0)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--schedule", default="floor_len,floor_sample,naive,floor_len,floor_sample",
                    help="variants in the order they run (repeat a name for repetitions)")
    ap.add_argument("--threads", default="auto",
                    help="intra-op threads per rank on CPU; auto: cores / local ranks (no oversubscription)")
    ap.add_argument("--check-masks", default=None, help="a masks.jsonl of the same data to compare LD with")
    ap.add_argument("--local_rank", type=int, default=-1)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rft_ds import dist
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_conversation
    from rft_ds.label.chunks import plan_batches
    from rft_ds.modeling import load_tokenizer, torch_dtype

    dist.init()
    W, R = dist.world_size(), dist.rank()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", dist.local_rank()) if on_gpu else torch.device("cpu")
    precision = a.precision if a.precision != "auto" else ("bf16" if on_gpu else "fp32")
    if not on_gpu:
        local = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", W)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local) if a.threads == "auto" else int(a.threads))

    tok = load_tokenizer(a.base)
    pad_id = tok.pad_token_id
    encs = [encode_conversation(c, tok, a.max_seq_len) for c in read_conversations(a.data)]
    lengths = [len(e.input_ids) for e in encs]
    batches = plan_batches(lengths, a.batch_size)
    mine = [i for j, b in enumerate(batches) if j % W == R for i in b]

    def loss_positions(e):
        return [t - 1 for t, m in enumerate(e.msg_index) if m >= 0 and t >= 1]

    samples = []
    for i in mine:
        e = encs[i]
        pos = loss_positions(e)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        samples.append((i, ids, torch.tensor(pos, dtype=torch.long), ids[1:][torch.tensor(pos) if pos else
                                                                            torch.zeros(0, dtype=torch.long)]))
    by_len = defaultdict(list)
    for s in samples:
        by_len[s[1].numel()].append(s)
    len_batches = []
    for n in sorted(by_len, reverse=True):
        group = by_len[n]
        for s in range(0, len(group), a.batch_size):
            len_batches.append(group[s: s + a.batch_size])

    models = []
    for d in (a.base, a.shad):
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype(precision), attn_implementation="sdpa")
        m.config.use_cache = False
        models.append(m.to(device).eval())

    def floor_sample():
        out = {}
        for i, ids, pos, tgt in samples:
            x = ids.to(device).unsqueeze(0)
            ces = []
            for m in models:
                h = m.model(input_ids=x).last_hidden_state[0]
                ces.append(F.cross_entropy(m.lm_head(h[pos.to(device)]).float(), tgt.to(device), reduction="none"))
            out[i] = ces
        return out

    def floor_len():
        out = {}
        for group in len_batches:
            x = torch.stack([s[1] for s in group]).to(device)
            rows = torch.cat([torch.full_like(s[2], k) for k, s in enumerate(group)]).to(device)
            cols = torch.cat([s[2] for s in group]).to(device)
            tgt = torch.cat([s[3] for s in group]).to(device)
            ces = []
            for m in models:
                h = m.model(input_ids=x).last_hidden_state[rows, cols]
                ces.append(F.cross_entropy(m.lm_head(h).float(), tgt, reduction="none"))
            split = [s[2].numel() for s in group]
            parts = [c.split(split) for c in ces]
            for k, s in enumerate(group):
                out[s[0]] = [p[k] for p in parts]
        return out

    def naive():
        out = {}
        for i, ids, pos, tgt in samples:
            x = ids.to(device).unsqueeze(0)
            ces = []
            for m in models:
                logits = m(input_ids=x).logits[0].float()          # [T, V], every position
                lp = torch.log_softmax(logits[:-1], dim=-1)
                ce = -lp.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)  # every next token
                ces.append(ce[pos.to(device)])
            out[i] = ces
        return out

    from rft_ds.data.batching import collate

    mine_batches = [b for j, b in enumerate(batches) if j % W == R]

    def floor_batches():
        """label's own batches (rft_ds collate: right-padded, attention mask), plain HF forwards,
        logits at loss positions only: the floor of the same work label does."""
        out = {}
        for b in mine_batches:
            mb = collate([encs[i] for i in b], pad_id)
            x, att = mb.input_ids.to(device), mb.attention_mask.to(device)
            ces = []
            for m in models:
                h = m.model(input_ids=x, attention_mask=att).last_hidden_state[:, :-1][mb.target_mask.to(device)]
                ces.append(F.cross_entropy(m.lm_head(h).float(), mb.targets.to(device), reduction="none"))
            parts = [c.split(mb.target_mask.sum(1).tolist()) for c in ces]  # per sample, in batch order
            for k, i in enumerate(b):
                out[i] = [p[k] for p in parts]
        return out

    fns = {"floor_len": floor_len, "floor_sample": floor_sample, "naive": naive, "floor_batches": floor_batches}
    times: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)
    results = {}
    with torch.inference_mode():
        for name in a.schedule.split(","):
            dist.barrier()
            if on_gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = fns[name]()
            if on_gpu:
                torch.cuda.synchronize()
            own[name].append(time.perf_counter() - t0)
            dist.barrier()
            times[name].append(time.perf_counter() - t0)
            results[name] = res
            dist.log(f"label_floor_worker: {name} {times[name][-1]:.2f}s")

    check = None
    if a.check_masks and R == 0:
        # LD of the label run vs this rank's floor (and naive) losses, token by token
        recs = {}
        with open(a.check_masks) as f:
            for line in f:
                r = json.loads(line)
                recs[r["id"]] = [x for t in r["turns"] for x in t["loss_diff"]]
        worst = {}
        for name in ("floor_len", "floor_sample", "naive", "floor_batches"):
            if name not in results:
                continue
            err = 0.0
            for i, (b, s) in results[name].items():
                ld = (s - b).float().cpu().tolist()
                ref = recs[encs[i].id]
                assert len(ref) == len(ld), (encs[i].id, len(ref), len(ld))
                err = max(err, max((abs(x - y) for x, y in zip(ld, ref)), default=0.0))
            worst[name] = err
        check = {"max_abs_ld_diff_vs_masks": worst}

    n_loss = int(dist.all_reduce_sum(torch.tensor([float(sum(s[2].numel() for s in samples))],
                                                   dtype=torch.float64)).item())
    n_tok = int(dist.all_reduce_sum(torch.tensor([float(sum(s[1].numel() for s in samples))],
                                                  dtype=torch.float64)).item())
    own_max = {}
    for name, xs in own.items():
        gathered = dist.all_gather_object(xs)
        own_max[name] = [max(g[k] for g in gathered) for k in range(len(xs))]
    if R == 0:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps({
            "times": times, "rank_loop_max": own_max, "median": {k: statistics.median(v) for k, v in times.items()},
            "loss_tokens": n_loss, "tokens": n_tok, "samples": len(encs), "world": W, "precision": precision,
            "forward_calls_per_model_rank0": {"floor_len": len(len_batches), "floor_sample": len(samples),
                                              "naive": len(samples)},
            "threads": torch.get_num_threads(), "check": check,
        }, indent=2) + "\n")
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
