"""`rft-ds evaluate`: greedy-generate the last assistant turn of each held-out sample and score the
tool calls in it against the reference.

For a sample whose last assistant message is messages[k], the prompt is
`apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)` (after
`ensure_chat_template`), tokenized with add_special_tokens=False; generation is greedy and stops at
an end-of-sequence token (the union of the tokenizer's eos and the model's generation_config eos) or
after --max-new-tokens. The generated text is decoded without special tokens.

Batching: prompts are left-padded (pad token = the tokenizer's, else eos) with an attention mask;
transformers derives the position ids from the mask, so a padded prompt is generated exactly as it
would be alone (tests check batched == unbatched greedy in fp32; in bf16/fp16 tiny numeric
differences between batch shapes can flip a near-tie).

Distributed: under `deepspeed --module rft_ds evaluate ...` each rank loads a FULL copy of the
model (evaluation is data-parallel only, not ZeRO-sharded: the model must fit on one device), takes
the strided shard samples[rank::world_size], and the per-sample results are gathered to every rank
and merged back into input order, so every number equals a single-process run's.

Metrics (see `score` and `summarize`; definitions in docs/bring-your-data.md).
"""

from __future__ import annotations

import argparse
import os
import time

from rft_ds.errors import ConfigError, DataError
from rft_ds.tools.toolcalls import arguments_match, calls_match, names_match, parse_turn

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 8


# ---------------------------------------------------------------- scoring (pure)

def score(generated: str, reference: str) -> dict:
    """Flags for one sample. Call metrics are None when they do not apply to the sample."""
    ref, gen = parse_turn(reference), parse_turn(generated)
    ref_has_call = bool(ref.calls)
    ref_no_call = ref.calls == []
    return {
        "exact_match": generated.strip() == reference.strip(),
        "reference_calls": ref.calls,
        "generated_calls": gen.calls,
        "reference_form": ref.form,
        "generated_form": gen.form,
        "parse_failure": gen.calls is None,
        "parse_error": gen.error,
        "reference_parse_failure": ref.calls is None,
        "reference_has_call": ref_has_call,
        "name_match": names_match(gen.calls, ref.calls) if ref_has_call else None,
        "args_match": arguments_match(gen.calls, ref.calls) if ref_has_call else None,
        "call_match": calls_match(gen.calls, ref.calls) if ref_has_call else None,
        "no_call_match": (gen.calls == []) if ref_no_call else None,
    }


def _rate(flags: list[bool]) -> float | None:
    return sum(1 for f in flags if f) / len(flags) if flags else None


def summarize(records: list[dict]) -> dict:
    """Aggregate per-sample `score` dicts (or result records containing them)."""
    with_call = [r for r in records if r["reference_has_call"]]
    no_call = [r for r in records if r["no_call_match"] is not None]
    out = {
        "samples": len(records),
        "exact_match": _rate([r["exact_match"] for r in records]),
        "samples_with_call": len(with_call),
        "name_accuracy": _rate([r["name_match"] for r in with_call]),
        "args_exact_match": _rate([r["args_match"] for r in with_call]),
        "call_exact_match": _rate([r["call_match"] for r in with_call]),
        "samples_without_call": len(no_call),
        "no_call_accuracy": _rate([r["no_call_match"] for r in no_call]),
        "parse_failure_rate": _rate([r["parse_failure"] for r in records]),
        "reference_parse_failures": sum(1 for r in records if r["reference_parse_failure"]),
    }
    if records and "finished" in records[0]:
        out["hit_max_new_tokens"] = sum(1 for r in records if not r["finished"])
    return out


def format_table(summary: dict) -> str:
    def v(x):
        return "  n/a" if x is None else f"{x:.3f}"

    n, c, z = summary["samples"], summary["samples_with_call"], summary["samples_without_call"]
    rows = [
        ("exact match (whole turn)", summary["exact_match"], f"{n} samples"),
        ("call exact match", summary["call_exact_match"], f"{c} samples with a reference call"),
        ("function-name accuracy", summary["name_accuracy"], f"{c} samples with a reference call"),
        ("argument exact match", summary["args_exact_match"], f"{c} samples with a reference call"),
        ("no-call accuracy", summary["no_call_accuracy"], f"{z} samples without a reference call"),
        ("parse-failure rate", summary["parse_failure_rate"], f"{n} samples"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'metric'.ljust(w)}  value  over"] + [f"{a.ljust(w)}  {v(b)}  {c_}" for a, b, c_ in rows]
    notes = []
    if summary.get("reference_parse_failures"):
        notes.append(f"{summary['reference_parse_failures']} references did not parse (left out of call metrics)")
    if summary.get("hit_max_new_tokens"):
        notes.append(f"{summary['hit_max_new_tokens']} generations hit --max-new-tokens before end-of-sequence")
    return "\n".join(lines + [f"note: {x}" for x in notes])


def summary_path(output: str | os.PathLike) -> str:
    return str(output) + ".summary.json"


# ---------------------------------------------------------------- generation

def _prompts(convs) -> list[tuple[list[dict], str]]:
    out = []
    for c in convs:
        k = max(i for i, m in enumerate(c.messages) if m["role"] == "assistant")
        if k == 0:
            raise DataError(c.path, c.line, "messages[0]", f"sample {c.id!r}: the last assistant turn is the first "
                            "message, so there is no context to generate it from", "drop the sample")
        out.append((c.messages[:k], c.messages[k]["content"]))
    return out


def _eos_ids(tokenizer, model) -> list[int]:
    ids = []
    for x in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ConfigError("the tokenizer and the model's generation_config define no eos token: "
                          "generation could not stop at the end of a turn")
    return ids


def generate_batch(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, eos_ids: list[int],
                   pad_id: int) -> list[tuple[str, int, bool]]:
    """Greedy-generate for left-padded prompts: [(text, n_new_tokens, finished_at_eos)]."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=eos_ids, pad_token_id=pad_id)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
    results = []
    for row in out[:, width:].tolist():
        finished = False
        for j, t in enumerate(row):
            if t in eos_ids:  # everything after the first eos is padding
                row, finished = row[:j], True
                break
        results.append((tokenizer.decode(row, skip_special_tokens=True), len(row), finished))
    return results


def _load(model_dir: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rft_ds import dist
    from rft_ds.data.render import ensure_chat_template

    if not os.path.isdir(model_dir):
        raise ConfigError(f"--model {model_dir}: not a directory (expected a Hugging Face model directory)")
    if dtype == "auto":
        dtype = "bfloat16" if dist.on_gpu() else "float32"
    tok = AutoTokenizer.from_pretrained(model_dir)
    ensure_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(dist.device()).eval()
    return tok, model


def _generate_shard(tok, model, prompts, indices, max_new_tokens, batch_size) -> list[tuple[int, tuple]]:
    from rft_ds import dist

    eos_ids = _eos_ids(tok, model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
    ids = {i: tok(tok.apply_chat_template(prompts[i][0], add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"] for i in indices}
    order = sorted(indices, key=lambda i: (-len(ids[i]), i))  # longest first: less padding, OOM shows early
    out, t0, last = [], time.time(), time.time()
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        gens = generate_batch(model, tok, [ids[i] for i in batch], max_new_tokens, eos_ids, pad_id)
        out.extend(zip(batch, gens))
        if time.time() - last > 30:
            last = time.time()
            print(f"[rank {dist.rank()}] evaluate: {len(out)}/{len(order)} samples, {last - t0:.0f}s", flush=True)
    return out


def evaluate(model_dir: str, data: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, output: str | None = None,
             max_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "auto",
             quiet: bool = False) -> dict:
    """Evaluate `model_dir` on `data`; returns the summary dict (on every rank).

    Writes the per-sample results to `output` and the summary to `<output>.summary.json` (rank 0,
    atomically) when `output` is given. Under a multi-rank launch, initialises torch.distributed and
    splits the samples across ranks (data-parallel; see the module docstring).
    """
    from rft_ds import dist
    from rft_ds.data.formats import read_conversations
    from rft_ds.fsio import atomic_write, dumps_line, write_json

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {max_samples}")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    convs = read_conversations(data)
    if max_samples is not None:
        convs = convs[:max_samples]
    prompts = _prompts(convs)
    if dist.world_size() > 1:
        dist.init()
    rank, world = dist.rank(), dist.world_size()
    tok, model = _load(model_dir, dtype)
    mine = list(range(rank, len(prompts), world))
    if not quiet:
        dist.log(f"evaluate: {len(prompts)} samples on {world} rank(s) (data-parallel, a full model copy each), "
                 f"batch size {batch_size}, max {max_new_tokens} new tokens")
    local = _generate_shard(tok, model, prompts, mine, max_new_tokens, batch_size)
    gathered = dist.all_gather_object(local)
    by_index = {i: g for part in gathered for i, g in part}
    assert sorted(by_index) == list(range(len(prompts))), "every sample generated exactly once"

    records = []
    for i, conv in enumerate(convs):
        text, n_new, finished = by_index[i]
        reference = prompts[i][1]
        records.append({"id": conv.id, "reference": reference, "generated": text, **score(text, reference),
                        "generated_tokens": n_new, "finished": finished})
    summary = {**summarize(records), "model": str(model_dir), "data": str(data), "max_new_tokens": max_new_tokens}
    if dist.is_main():
        if output is not None:
            with atomic_write(output) as f:
                for r in records:
                    f.write(dumps_line(r))
            write_json(summary_path(output), summary)
        if not quiet:
            print(format_table(summary), flush=True)
            if output is not None:
                print(f"per-sample results: {output}\nsummary: {summary_path(output)}", flush=True)
    return summary


def run(args: argparse.Namespace) -> int:
    evaluate(args.model, args.data, args.max_new_tokens, args.output, args.max_samples, args.batch_size, args.dtype)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="greedy-generate the last assistant turn of held-out samples and score the tool calls",
        description="Greedy-generate the last assistant turn of each sample from the turns before it and report "
                    "exact match, function-name accuracy, argument exact match, call exact match and parse-failure "
                    "rate. Under `deepspeed --module rft_ds evaluate ...` the samples are split across ranks, each "
                    "with a full model copy (data-parallel, not ZeRO-sharded). See docs/bring-your-data.md.")
    p.add_argument("--model", required=True, help="Hugging Face model directory (model + tokenizer)")
    p.add_argument("--data", required=True, help="held-out JSONL (OpenAI messages or ShareGPT)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--output", default=None,
                   help="per-sample results JSONL; the summary goes to <output>.summary.json")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts generated together per rank")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on GPU, float32 on CPU")
    p.set_defaults(func=run)

