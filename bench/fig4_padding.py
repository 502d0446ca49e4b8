"""Figure 4: padding share of computed tokens in training and labeling batches (target <= 10%).

Demo data (data/demo/train.jsonl), demo settings: 2 ranks, micro-batch 8 (global batch 16),
label batch 16, max-seq-len 512, the demo's tokenizer (the tiny model's). Training: every optimizer
step of one epoch through rft_ds.data.batching.global_batches / split_global_batch / collate
(length grouping on, the default); labeling: rft_ds.label.chunks.plan_batches. Computed tokens = rows x
the longest row of each micro-batch (what the forward pass runs over); padding share =
1 - real tokens / computed tokens. No model runs: seconds.

padding_share (the figure) = the larger of the two; both, and the share without length grouping
(for contrast), are in the details.
"""

from common import DEMO_TRAIN, models, save_figure, say, sizes

TARGET = "<= 0.10"


def main() -> None:
    from rft_ds.data.batching import DUMMY, collate, global_batches, split_global_batch
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset
    from rft_ds.label.chunks import plan_batches
    from rft_ds.modeling import load_tokenizer

    s = sizes()
    base, _ = models()
    tok = load_tokenizer(str(base))
    encs, _ = encode_dataset(read_conversations(str(DEMO_TRAIN)), tok, s["max_seq_len"])
    lengths = [len(e.input_ids) for e in encs]
    W, B, GA = s["nproc"], s["micro_batch"], s["grad_accum"]
    dummy = min(encs, key=lambda e: len(e.input_ids))

    def train_share(group: bool) -> dict:
        real = computed = 0
        for gb in global_batches(lengths, W * B * GA, 42, 0, group):
            for r in range(W):
                for part in split_global_batch(gb, lengths, W, B, GA, r):
                    mb = collate([None if i == DUMMY else encs[i] for i in part], tok.pad_token_id, dummy)
                    computed += mb.input_ids.numel()
                    real += int(mb.attention_mask.sum())
        return {"real": real, "computed": computed, "share": 1 - real / computed}

    def label_share() -> dict:
        real = computed = 0
        for b in plan_batches(lengths, s["label_batch"]):
            mb = collate([encs[i] for i in b], tok.pad_token_id)
            computed += mb.input_ids.numel()
            real += int(mb.attention_mask.sum())
        return {"real": real, "computed": computed, "share": 1 - real / computed}

    tr, lab, ungrouped = train_share(True), label_share(), train_share(False)
    share = max(tr["share"], lab["share"])
    save_figure("padding_share", share, TARGET, {"train": tr, "label": lab, "train_without_length_grouping": ungrouped,
                                                 "samples": len(encs)})
    say(f"padding_share = {share:.4f} (train {tr['share']:.4f}, label {lab['share']:.4f}; "
        f"train without length grouping {ungrouped['share']:.4f})")


if __name__ == "__main__":
    main()
