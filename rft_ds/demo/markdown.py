"""report.md of `rft-ds demo-report`, rendered from the report dict (what report.json holds): the
header (base model, budget settings, wall time per phase), then one function per part of the three
sections: 1. SHAD labels vs the ground-truth roles, 2. SFT vs RFT on the held-out split, 3. pictures."""

from __future__ import annotations

import os
from pathlib import Path

from rft_ds.demo.heldout import HELDOUT_METRICS, RUNS


def fmt(x, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pm(s: dict, signed: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    return fmt(s["mean"], signed=signed) + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report_header(rep: dict) -> str:
    """The title, the base model, the run's budget settings and the wall time per phase."""
    out = ["# rft-ds demo report", "",
           f"Made by `{rep['command']}`. Demo directory `{rep['demo_dir']}`, data `{rep['data_dir']}`.", ""]
    model = rep.get("model") or {}
    if model:
        arch = model.get("architecture") or {}
        desc = f"Base model: `{model.get('path')}`"
        if model.get("name"):
            desc += f" ({model['name']})"
        if arch:
            desc += (f": {arch.get('model_type')}, {arch.get('num_hidden_layers')} layers, hidden "
                     f"{arch.get('hidden_size')}, vocabulary {arch.get('vocab_size')}"
                     + (", tied embeddings" if arch.get("tie_word_embeddings") else "")
                     + (f", {model['parameters']:,} parameters" if isinstance(model.get("parameters"), int) else "")
                     + (f", weights {arch.get('dtype')}" if arch.get("dtype") else ""))
        out += [desc + ".", ""]
        if model.get("note"):
            out += [f"> {model['note']}", ""]
        if model.get("name"):
            out += ["The base model is used as it comes: no warm-up step. It is pretrained and has never seen this "
                    "data's template, so SHAD and both fine-tunes start from the same pretrained weights.", ""]
    if rep.get("settings"):
        out += ["Budget of this run (`recipes/demo/run.sh` variables):", "",
                md_table(["setting", "value"], [[f"`{k}`", f"`{v}`"] for k, v in rep["settings"].items()]), ""]
    if rep.get("phase_timings_s"):
        rows = [[name, f"{sec:.0f}"] for name, sec in rep["phase_timings_s"]]
        rows.append(["total (phases so far)", f"{sum(x for _, x in rep['phase_timings_s']):.0f}"])
        out += ["Wall time per phase (seconds, this machine):", "", md_table(["phase", "s"], rows), ""]

    return "\n".join(out)


def _agreement_intro(rep: dict) -> list[str]:
    """Section 1's heading: what was compared, and the three truths."""
    ag = rep["shad_agreement"]
    out = ["## 1. SHAD labels vs the ground-truth roles (training data)", "",
           f"{ag['samples']} labeled samples of `{rep['inputs']['train']}`, {ag['tokens']} assistant loss tokens "
           f"(the tokens in `{rep['inputs']['masks']}`"
           + (f", SHAD margin {rep['masks_meta']['margin']}" if rep["masks_meta"].get("margin") is not None else "")
           + "). The true role of a token is the majority role of the message-content characters it covers "
           "(ties count as reasoning; a token with no content character, such as the end-of-turn marker, is "
           "boilerplate), except under the needs-input truth (below). Positive class: reasoning."
           + (f" {ag['truncated_turns']} turn(s) were truncated by the labeling pass; their labeled tokens are "
              "compared." if ag["truncated_turns"] else ""), ""]
    return out + ["Three truths, each reported (none is tuned to SHAD's output):", "",
                 "- **semantic**: the generator's roles (`roles.jsonl`): every character of an input-dependent slot "
                 "(intent phrase, tool name, argument values, answer sentence) is reasoning;",
                 "- **prefix-aware**: the semantic roles minus what the message's own earlier text repeats (a value "
                 "repeated from the Thought into the Action Input, any word seen earlier in the message) and the "
                 "non-alphanumeric characters inside slots (`rft_ds/demo/truths.py:prefix_aware`);",
                 "- **needs-input**: computed by the generator from the message text "
                 "(`rft_ds/demo/needs_input.py:needs_input`): a character is reasoning iff the message's own earlier "
                 "text does not determine it among all messages the generator can write; so the tool name after a "
                 "Thought that names the task, the Action Input's copied values, the fixed words of an intent "
                 "phrase or answer sentence once the first word has named the tool, and the year of a date are "
                 "boilerplate, while the call-or-answer word (`need`/`have`) and the end of a one-sentence answer "
                 "are reasoning. A token is reasoning if any of its characters is (the other two truths: the "
                 "majority).", "",
                 "LD ROC AUC: the probability that a random true-reasoning token has a higher LD than a random "
                 "true-boilerplate token (ties count one half): threshold-free, 0.5 is chance.", ""]


def _agreement_tables(ag: dict) -> list[str]:
    """The metrics under each truth, the needs-input tokens by kind and the confusion counts."""
    pa = ag.get("prefix_aware") or ag
    ni = ag.get("needs_input") or ag
    keys = [("token accuracy", "token_accuracy", False), ("reasoning precision", "reasoning_precision", False),
            ("reasoning recall", "reasoning_recall", False), ("boilerplate recall", "boilerplate_recall", False),
            ("balanced accuracy", "balanced_accuracy", False), ("LD ROC AUC", "ld_roc_auc", False),
            ("share of tokens labeled reasoning (SHAD)", "labeled_reasoning_share", False),
            ("share of tokens that are reasoning (truth)", "true_reasoning_share", False),
            ("mean LD of true reasoning tokens (nats)", "mean_ld_true_reasoning", True),
            ("mean LD of true boilerplate tokens (nats)", "mean_ld_true_boilerplate", True)]
    out = [md_table(["metric", "semantic truth", "prefix-aware truth", "needs-input truth"],
                   [[name, fmt(ag.get(k), signed=sg), fmt(pa.get(k), signed=sg), fmt(ni.get(k), signed=sg)]
                    for name, k, sg in keys])]
    bd = ni.get("breakdown")
    if bd:
        v, t = bd["value"], bd["template_choice"]
        out += ["", f"Needs-input reasoning tokens by kind (`needs_input.py:needs_input_kinds`): {v['tokens']} *value* "
                f"tokens (which city, which digit) with SHAD recall {fmt(v['reasoning_recall'])} and mean LD "
                f"{fmt(v['mean_ld'], signed=True)}; {t['tokens']} *template-choice* tokens (call or answer, which tool's "
                f"phrase, one or two answer sentences, where a number ends) with recall {fmt(t['reasoning_recall'])} "
                f"and mean LD {fmt(t['mean_ld'], signed=True)}. LD ROC AUC of value tokens against needs-input "
                f"boilerplate, template choices left out: **{fmt(bd['ld_roc_auc_values_only'])}**. A template choice "
                "needs the input, but only a model that knows the template's conventions can use the input there; "
                "the base model has never seen them, so SHAD cannot tell these tokens from boilerplate."]
    out += ["", "Confusion (tokens; semantic / prefix-aware / needs-input truth):", ""]
    cs = [x["confusion"] for x in (ag, pa, ni)]
    out += [md_table(["", "SHAD: reasoning", "SHAD: boilerplate"],
                   [["true reasoning", " / ".join(str(c["tp"]) for c in cs), " / ".join(str(c["fn"]) for c in cs)],
                    ["true boilerplate", " / ".join(str(c["fp"]) for c in cs), " / ".join(str(c["tn"]) for c in cs)]]),
            ""]
    return out


def _heldout_runs(rep: dict) -> list[str]:
    """Section 2's heading: what was measured, per seed and over seeds."""
    ho, seeds = rep["heldout"], rep["seeds"]
    out = ["## 2. SFT vs RFT on the held-out split", "",
           f"{ho['samples']} held-out samples of `{rep['inputs']['heldout']}`. Teacher-forced: next-token argmax "
           f"accuracy and mean cross-entropy over the loss tokens of every assistant message ({ho['tokens_reasoning']} "
           f"reasoning, {ho['tokens_boilerplate']} boilerplate tokens by true role), fp32. Generation: greedy, "
           f"max {ho['max_new_tokens']} new tokens, on the {ho['call_turns']} assistant turns that make a tool call, "
           "each generated from the conversation before it (`rft-ds evaluate` metrics; whole-turn exact match is "
           "over the same turns).", "", "Per seed:", ""]
    short = [("tf_acc_reasoning", "TF acc reasoning"), ("tf_acc_boilerplate", "TF acc boilerplate"),
             ("tf_ce_reasoning", "CE reasoning"), ("tf_ce_boilerplate", "CE boilerplate"),
             ("call_exact_match", "call EM"), ("name_accuracy", "name acc"), ("args_exact_match", "args EM"),
             ("turn_exact_match", "turn EM")]
    rows = []
    for s in seeds:
        for r in RUNS:
            m = ho["runs"][r][str(s)]
            rows.append([str(s), r.upper()] + [fmt(m.get(k)) for k, _ in short])
    out += [md_table(["seed", "run"] + [h for _, h in short], rows), ""]
    n = len(seeds)
    spread_txt = ("mean ± sample standard deviation (n−1) over " if n > 1 else "the single ") + \
        f"seed{'s' if n > 1 else ''} {', '.join(map(str, seeds))}"
    out += [f"Over seeds: {spread_txt}. RFT − SFT is the mean ± std of the per-seed paired differences.", ""]
    rows = []
    for key, label, _ in HELDOUT_METRICS:
        sm = ho["summary"][key]
        rows.append([label, _pm(sm["sft"]), _pm(sm["rft"]), _pm(sm["rft_minus_sft"], signed=True)])
    out += [md_table(["metric", "SFT", "RFT", "RFT − SFT"], rows), ""]
    return out


def _heldout_differences(rep: dict) -> list[str]:
    """RFT - SFT per metric in words, and the generations that reached the token limit."""
    ho, seeds = rep["heldout"], rep["seeds"]
    said = []
    for key, label, higher in HELDOUT_METRICS:
        d = ho["summary"][key]["rft_minus_sft"]["mean"]
        if d is None:
            continue
        if d == 0:
            said.append(f"{label}: RFT − SFT = 0 (equal)")
        else:
            winner = "RFT" if (d > 0) == higher else "SFT"
            said.append(f"{label}: RFT − SFT = {fmt(d, 4, signed=True)} ({winner} better; "
                        f"{'higher' if higher else 'lower'} is better)")
    out = ["Computed differences (mean over seeds):", ""] + [f"- {x}" for x in said] + [""]
    hits = [f"{r.upper()} seed {s}: {ho['runs'][r][str(s)]['hit_max_new_tokens']}" for s in seeds for r in RUNS
            if ho["runs"][r][str(s)]["hit_max_new_tokens"]]
    if hits:
        out += [f"Generations that reached the {ho['max_new_tokens']}-token limit before the end of the turn: "
                + ", ".join(hits) + ".", ""]
    return out


def _pictures(rep: dict, report_dir: Path) -> list[str]:
    """Section 3: the loss curves and the masks page, linked relative to the report's directory."""
    pics, seeds = rep["pictures"], rep["seeds"]

    def rel(p: str) -> str:
        return Path(os.path.relpath(p, report_dir)).as_posix()

    out = ["## 3. Pictures", ""]
    if pics.get("curves"):
        out += [f"Loss curves of seed {seeds[0]} (per-class token loss; [`{rel(pics['curves'])}`]"
                f"({rel(pics['curves'])})):", "", f"![loss curves]({rel(pics['curves'])})", ""]
    if pics.get("masks_html"):
        out += [f"SHAD labels, token by token ({pics['masks_html_samples']} samples of the training data): "
                f"[`{rel(pics['masks_html'])}`]({rel(pics['masks_html'])})", ""]
    return out


def render_markdown(rep: dict, report_dir: Path) -> str:
    """report.md's text (without the last newline), its links relative to `report_dir`."""
    out = report_header(rep).split("\n")
    out += _agreement_intro(rep) + _agreement_tables(rep["shad_agreement"])
    out += _heldout_runs(rep) + _heldout_differences(rep)
    out += _pictures(rep, report_dir)
    return "\n".join(out)
