"""Part 2 of `rft-ds demo-report` and the measurement of `rft-ds compare-report`: training runs on
the held-out split. The held-out encodings with every loss token's true role (`heldout_encodings`),
the tool-call turns that greedy generation is scored on (`call_turn_samples`, written by
`write_call_samples`), one run's measurement (`measure_run`: teacher-forced next-token accuracy and
mean cross-entropy by true role, `teacher_forced`, plus the tool-call metrics of greedy generation),
and demo-report's per-metric summary over seeds (`summarize_seeds`): mean ± sample std of each run
and of the per-seed RFT - SFT differences."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rft_ds.demo.stats import ratio, spread
from rft_ds.demo.truths import token_truth
from rft_ds.errors import ConfigError, DataError

RUNS = ("sft", "rft")
MAX_NEW_TOKENS_SLACK = 8  # auto --max-new-tokens = the longest reference call turn (tokens) + this

# (key in report.json, label in report.md, higher is better)
HELDOUT_METRICS = [
    ("tf_acc_reasoning", "teacher-forced accuracy, reasoning tokens", True),
    ("tf_acc_boilerplate", "teacher-forced accuracy, boilerplate tokens", True),
    ("tf_acc_all", "teacher-forced accuracy, all loss tokens", True),
    ("tf_ce_reasoning", "mean CE, reasoning tokens (nats)", False),
    ("tf_ce_boilerplate", "mean CE, boilerplate tokens (nats)", False),
    ("tf_ce_all", "mean CE, all loss tokens (nats)", False),
    ("call_exact_match", "call exact match", True),
    ("name_accuracy", "function-name accuracy", True),
    ("args_exact_match", "argument exact match", True),
    ("turn_exact_match", "whole-turn exact match", True),
    ("parse_failure_rate", "parse-failure rate", False),
]


def teacher_forced(model_dir: str, encs: list, pad_id: int, batch_size: int, device, chunk: int = 4096,
                   dtype: str = "float32") -> dict:
    """Next-token argmax accuracy and mean CE of the loss tokens, split by `Encoded.classes` (the
    model in `dtype`, fp32 by default; logits and CE always in fp32)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rft_ds.data.batching import collate

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_dir}: cannot load the model: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    acc = {c: [0, 0, 0.0] for c in (0, 1)}  # class -> [tokens, correct, CE sum]
    order = sorted(range(len(encs)), key=lambda i: (-len(encs[i].input_ids), i))
    t0 = last = time.time()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            if time.time() - last > 20:
                last = time.time()
                print(f"demo-report: teacher-forced {s}/{len(order)} samples ({last - t0:.0f}s)", file=sys.stderr,
                      flush=True)
            mb = collate([encs[i] for i in order[s:s + batch_size]], pad_id).to(device)
            hidden = decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).last_hidden_state
            h = hidden[:, :-1][mb.target_mask]
            for c0 in range(0, h.shape[0], chunk):
                logits = head(h[c0:c0 + chunk]).float()
                tgt, cls = mb.targets[c0:c0 + chunk], mb.classes[c0:c0 + chunk]
                ce = F.cross_entropy(logits, tgt, reduction="none").double()
                hit = logits.argmax(-1) == tgt
                for c in (0, 1):
                    sel = cls == c
                    acc[c][0] += int(sel.sum())
                    acc[c][1] += int((hit & sel).sum())
                    acc[c][2] += float(ce[sel].sum())
    del model
    n_all = acc[0][0] + acc[1][0]
    return {
        "tokens_reasoning": acc[1][0], "tokens_boilerplate": acc[0][0],
        "tf_acc_reasoning": ratio(acc[1][1], acc[1][0]),
        "tf_acc_boilerplate": ratio(acc[0][1], acc[0][0]),
        "tf_acc_all": ratio(acc[0][1] + acc[1][1], n_all),
        "tf_ce_reasoning": ratio(acc[1][2], acc[1][0]),
        "tf_ce_boilerplate": ratio(acc[0][2], acc[0][0]),
        "tf_ce_all": ratio(acc[0][2] + acc[1][2], n_all),
    }


def call_turn_samples(convs: list) -> list[dict]:
    """One evaluation sample per assistant turn that makes a tool call: the conversation up to and
    including that turn (so `evaluate` generates it from everything before it)."""
    from rft_ds.tools.toolcalls import parse_turn

    out = []
    for c in convs:
        for k, m in enumerate(c.messages):
            if k > 0 and m["role"] == "assistant" and parse_turn(m["content"]).calls:
                out.append({"id": f"{c.id}@{k}", "messages": c.messages[:k + 1]})
    return out


def summarize_seeds(per_run: dict[str, dict[str, dict]], seeds: list[int]) -> dict:
    """{metric: {"sft": spread, "rft": spread, "rft_minus_sft": spread of per-seed differences}}."""
    out = {}
    for key, _, _ in HELDOUT_METRICS:
        vals = {r: [per_run[r][str(s)].get(key) for s in seeds] for r in RUNS}
        diffs = [b - a if a is not None and b is not None else None for a, b in zip(vals["sft"], vals["rft"])]
        out[key] = {"sft": spread(vals["sft"]), "rft": spread(vals["rft"]), "rft_minus_sft": spread(diffs)}
    return out


def heldout_encodings(heldout_path, roles_path, tok, roles: dict, max_samples: int | None) -> tuple[list, list]:
    """The held-out conversations (the first `max_samples`) and their encodings, `classes` set to the
    true role of every loss token (`roles`: read_roles(roles_path))."""
    from rft_ds.data.formats import read_conversations

    heldout = read_conversations(heldout_path)
    if max_samples is not None:
        heldout = heldout[:max_samples]
    encs = []
    for c in heldout:
        if c.id not in roles:
            raise DataError(str(roles_path), None, None, f"no ground-truth roles for held-out sample {c.id!r}")
        enc, _, classes = token_truth(c, tok, roles[c.id])
        enc.classes = classes
        encs.append(enc)
    return heldout, encs


def longest_call_turn(heldout: list, encs: list, calls: list[dict]) -> int:
    """Tokens of the longest held-out assistant turn that makes a tool call."""
    call_ids = {s["id"] for s in calls}
    return max(sum(1 for mi in e.msg_index if mi == k) for c, e in zip(heldout, encs)
               for k in range(len(c.messages)) if f"{c.id}@{k}" in call_ids)


def write_call_samples(heldout: list, encs: list, heldout_path, eval_dir: Path,
                       max_new_tokens: int | None) -> tuple[list[dict], Path, int]:
    """The tool-call turns of `heldout` written to EVAL_DIR/heldout-calls.jsonl: (samples, that path,
    the generation limit: `max_new_tokens`, or the longest call turn + MAX_NEW_TOKENS_SLACK)."""
    from rft_ds.fsio import atomic_write, dumps_line

    calls = call_turn_samples(heldout)
    if not calls:
        raise DataError(str(heldout_path), None, None, "no assistant turn with a tool call to evaluate")
    if max_new_tokens is None:
        max_new_tokens = longest_call_turn(heldout, encs, calls) + MAX_NEW_TOKENS_SLACK
    calls_path = Path(eval_dir) / "heldout-calls.jsonl"
    with atomic_write(calls_path) as f:
        for s in calls:
            f.write(dumps_line(s))
    return calls, calls_path, max_new_tokens


def run_model_dir(run_dir) -> str:
    """The model a training run produced: final/, or final-merged/ where a LoRA run's --merge-lora
    wrote the full model beside its adapter."""
    run_dir = Path(run_dir)
    return str(run_dir / "final-merged" if (run_dir / "final-merged").is_dir() else run_dir / "final")


def check_run_tokenizer(model_dir: str, fp: str, heldout: list, encs: list, base) -> None:
    """A run's tokenizer must encode the held-out data as the base model's (fingerprint `fp`) does."""
    from rft_ds.data.render import encode_conversation, tokenizer_fingerprint
    from rft_ds.modeling import load_tokenizer

    mtok = load_tokenizer(model_dir)
    if tokenizer_fingerprint(mtok) != fp:
        for c, e in zip(heldout, encs):
            if encode_conversation(c, mtok).input_ids != e.input_ids:
                raise ConfigError(f"{model_dir}: its tokenizer encodes held-out sample {c.id!r} differently "
                                  f"from the base model's ({base}); the runs must fine-tune the base")


def measure_run(model_dir: str, encs: list, calls_path, out_jsonl, max_new_tokens: int, batch_size: int,
                eval_dtype: str, pad_id: int, device, timing: dict | None = None) -> dict:
    """One run on the held-out split: `teacher_forced` on `encs` (tokens, accuracy and CE by true role)
    plus the tool-call metrics of greedy generation (`rft_ds.tools.evaluate.evaluate`) on the call
    turns in `calls_path`, per-sample results in `out_jsonl`. `timing` (if given) gets
    teacher_forced_s and generation_s."""
    from rft_ds.tools.evaluate import evaluate

    t1 = time.time()
    tf = teacher_forced(model_dir, encs, pad_id, batch_size, device, dtype=eval_dtype)
    t2 = time.time()
    ev = evaluate(model_dir, str(calls_path), max_new_tokens=max_new_tokens, output=str(out_jsonl),
                  batch_size=batch_size, dtype=eval_dtype, quiet=True)
    if timing is not None:
        timing.update(teacher_forced_s=t2 - t1, generation_s=time.time() - t2)
    return {**tf, "call_exact_match": ev["call_exact_match"], "name_accuracy": ev["name_accuracy"],
            "args_exact_match": ev["args_exact_match"], "turn_exact_match": ev["exact_match"],
            "parse_failure_rate": ev["parse_failure_rate"], "samples_with_call": ev["samples_with_call"],
            "hit_max_new_tokens": ev.get("hit_max_new_tokens", 0)}
