"""`rft-ds demo-warmup-data`: the demo's stand-in for pretraining.

SHAD compares the shuffle-tuned model with the *original* model, which in the paper is a
pretrained LLM: it can read its input (so it predicts argument values the request contains) but
has never been fine-tuned on this data set's template (so the template's boilerplate is less
certain under it than under the shuffle-tuned model, which learned that template). A tiny random
model has neither skill, so the demo warms it first on the same tool-use tasks written in a
*different* surface style:

    Thought: I need <intent>.\\nAction: <tool>\\nAction Input: {"k": "v", ...}
        -> Goal: <intent>\\nTool: <tool>\\nArguments: {"k": "v", ...}
    Thought: I have the answer.\\nFinal Answer: <answer>
        -> Result: <answer>

It learns to read the request and copy its values into JSON arguments, not the ReAct scaffolding. On a cluster this step is
simply the user's pretrained model.
"""

from __future__ import annotations

import argparse
import json
import re

CALL = re.compile(r"^Thought: I need (?P<intent>.*)\.\nAction: (?P<tool>\S+)\nAction Input: (?P<args>\{.*\})$", re.S)
FINAL = re.compile(r"^Thought: I have the answer\.\nFinal Answer: (?P<answer>.*)$", re.S)


def restyle_content(text: str) -> str:
    m = CALL.match(text)
    if m:
        return f"Goal: {m['intent']}\nTool: {m['tool']}\nArguments: {m['args']}"
    m = FINAL.match(text)
    if m:
        return f"Result: {m['answer']}"
    return text


def restyle_file(src: str, dst: str) -> int:
    from rft_ds.fsio import atomic_write

    n = 0
    with open(src, encoding="utf-8") as f, atomic_write(dst) as out:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            for msg in obj["messages"]:
                if msg["role"] == "assistant":
                    msg["content"] = restyle_content(msg["content"])
            obj["id"] = f"warm-{obj['id']}"
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-warmup-data", help="the demo's stand-in for pretraining: tasks in another surface style")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)

    def run(a):
        print(f"demo-warmup-data: wrote {restyle_file(a.data, a.output)} samples to {a.output}")
        return 0

    p.set_defaults(func=run)
