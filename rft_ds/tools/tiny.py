"""`rft-ds tiny-model`: a tokenizer trained on the data and a small random-init Llama, saved in
Hugging Face format. Tests and the demo use it; nothing is downloaded. `write_random_masks` gives
tests and benchmarks a valid masks file with random labels.

The tokenizer is a SentencePiece-style BPE (`tokenizers.SentencePieceBPETokenizer`: Metaspace
pre-tokenizer, BPE merges) trained on every message of the data, wrapped in
`PreTrainedTokenizerFast` with ChatML special tokens and the ChatML chat template. (transformers
5.x's `LlamaTokenizer(vocab_file=...)` from a raw sentencepiece model loaded empty here; the
`tokenizers` route saves and reloads cleanly and gives the character offsets the mask code needs.)
"""

from __future__ import annotations

import argparse

from rft_ds.data.render import FALLBACK_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, SentencePieceBPETokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # No prefix space: a word after a special token (role names, turn starts) stays one piece.
    tok = SentencePieceBPETokenizer(unk_token="<unk>", add_prefix_space=False)
    # Like the pre-tokenizers of real LLM tokenizers, newlines, JSON punctuation and digits are
    # their own pieces, so one token never spans template text and a value.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n|[{}\[\]\":,.?!()]"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never"),
    ])
    # Every printable ASCII character is in the alphabet, so JSON and digits never map to <unk>.
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            initial_alphabet=alphabet, show_progress=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = FALLBACK_CHAT_TEMPLATE
    return fast


def build_tiny_model(data: str, output: str, vocab_size: int = 1024, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, intermediate_size: int | None = None,
                     max_positions: int = 2048, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import ensure_chat_template

    convs = read_conversations(data)
    texts = [m["content"] for c in convs for m in c.messages]
    texts += ["system\nuser\nassistant\ntool\n"] * 50  # role names as the chat template writes them
    tok = train_tokenizer(texts, vocab_size)
    # The rendered conversations must also tokenize well (role names, newlines).
    ensure_chat_template(tok)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(output, safe_serialization=True)
    tok.save_pretrained(output)
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {n/1e6:.2f}M parameters, vocab {len(tok)}, saved to {output}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="train a tokenizer on the data and save a small random Llama (CPU tests, demo)")
    p.add_argument("--data", required=True, help="JSONL (OpenAI messages or ShareGPT) whose text trains the tokenizer")
    p.add_argument("--output", required=True, help="directory for the Hugging Face model + tokenizer")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--intermediate-size", type=int, default=None, help="default 4 x hidden")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: build_tiny_model(a.data, a.output, a.vocab_size, a.hidden_size, a.layers,
                                                   a.heads, a.intermediate_size, a.max_positions, a.seed))


def write_random_masks(data, model_dir, out, seed: int = 0, max_seq_len: int = 4096, p_reasoning: float = 0.4):
    """A valid masks file for `data` with random labels (for loss tests and benchmarks that need any
    labels: RFT's cost does not depend on the label values). Returns `out` as a Path."""
    import json
    import random
    from pathlib import Path

    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_dataset, tokenizer_fingerprint
    from rft_ds.masks import make_record
    from rft_ds.modeling import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    fp = tokenizer_fingerprint(tok)
    encs, _ = encode_dataset(read_conversations(str(data)), tok, max_seq_len)
    rng = random.Random(seed)
    with open(out, "w") as f:
        for e in encs:
            turns = []
            for m in e.assistant_messages:
                ids = e.turn_tokens(m)
                labels = [int(rng.random() < p_reasoning) for _ in ids]
                turns.append({"message": m, "token_ids": ids, "labels": labels,
                              "loss_diff": [0.5 if x else -0.5 for x in labels]})
            f.write(json.dumps(make_record(e.id, fp, turns)) + "\n")
    return Path(out)
