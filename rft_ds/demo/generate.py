"""`rft-ds demo-data`: a small, seeded, synthetic ToolBench/ReAct-style tool-use data set.

The bundled demo (``data/demo/``) must run end to end on a CPU in minutes, with a 2-layer Llama of
hidden size 64-128. So every sample is short, the vocabulary is small (about 30 cities, 20 names,
a few pools of symbols, currencies, units, titles), the template text is the same in every sample
and every tool-call argument value is a verbatim copy of a string in the user message: a model that
reads its input can predict it, a model tuned on shuffled (input, output) pairs cannot. That is
exactly the contrast SHAD (arXiv 2412.14780) relies on. The tools, their texts and the value pools
are in ``rft_ds.demo.catalog``; this module writes samples from them.

Files (JSON lines, written atomically)
--------------------------------------
``train.jsonl``, ``heldout.jsonl``: one conversation per line, OpenAI messages format::

    {"id": "demo-train-00000", "messages": [{"role": "system", "content": "..."},
                                            {"role": "user", "content": "..."},
                                            {"role": "assistant", "content": "..."},
                                            {"role": "tool", "content": "{...}"}, ...]}

- system: a fixed header, then 3 tools sampled from a pool of 9, one compact JSON schema per
  line: ``{"name": ..., "description": ..., "parameters": {"<arg>": "<type>", ...}}``;
- user: one request (or two joined by " and ") naming concrete values;
- assistant tool call: ``Thought: I need <intent>.\\nAction: <tool>\\nAction Input: {json}``;
- tool: the observation, a JSON object;
- assistant final answer: ``Thought: I have the answer.\\nFinal Answer: <sentence(s)>``, quoting
  values from the observation(s) (and from the request).

70% of samples are one call; 15% make two calls for a two-part request; 15% have a second user
request answered with a second call. Held-out samples (``demo-heldout-NNNNN``) use only tool-call
argument combinations that never occur in train (the combination space is split by a stable hash),
so held-out requests are new combinations of seen values.

``roles.jsonl``: one line per sample (train first, then held-out), ground-truth token roles::

    {"id": "demo-train-00000", "roles": {"2": "000000011111...", "4": "..."}}

keyed by the index of each assistant message in ``messages``; the value has one character per
character of that message's content.

Role rule (exact by construction: messages are built from typed segments, never labelled by regex)
-----------------------------------------------------------------------------------------------
'1' (reasoning) = text that depends on this sample's input -- its request, the tool chosen for it,
or its observations:
  - the tool name after ``Action: ``;
  - the intent phrase of a Thought (``the weather in Paris on 2025-05-03``, words and values alike:
    the wording is chosen because of the request/tool);
  - every argument value inside ``Action Input`` (the characters between the quotes of a string
    value, the digits of a number) -- always a copy of a string in the latest user message;
  - the final-answer sentence (its wording is chosen per tool, its values come from the request and
    the observation), except the closing period.
'0' (boilerplate) = text that is the same in every sample at that place of the template:
  ``Thought: I need ``, ``.\\nAction: ``, ``\\nAction Input: ``, all JSON punctuation (braces,
  quotes, ``: ``, ``, ``) *and the argument key names* (they are fixed by the chosen tool's schema:
  the decision is the tool name, marked '1'; the keys that follow are format, like the paper's
  ``Action Input: {`` example of boilerplate), ``Thought: I have the answer.\\nFinal Answer: ``, the
  period closing each answer sentence and the space between two answer sentences.

Three truths (all reported by `rft-ds demo-report`; none is tuned to SHAD's output)
-----------------------------------------------------------------------------------
1. **semantic** (the roles above, ``roles.jsonl``): what depends on this sample's input.
2. **prefix-aware** (``rft_ds.demo.truths.prefix_aware``, derived from 1): minus any word or value
   already written earlier in the same message (the Action Input repeating the Thought's values) and
   the non-alphanumeric characters inside slots. It still counts as reasoning what the earlier text
   *implies* without repeating it: the tool name after a Thought that names the task, the fixed words
   of an intent phrase after its first word.
3. **needs-input** (``rft_ds.demo.needs_input.needs_input(content)``, computed from the message text
   and the templates and value pools of ``rft_ds.demo.catalog``): a character is '1' iff the
   message's own earlier text does not determine it -- among all assistant messages this generator
   can write that begin with the same text, more than one next character (or the end of the message)
   is possible. That is exactly what a model tuned on shuffled pairs can and cannot predict, so it
   is the truth SHAD's LD aims at. The tool name, the Action Input (keys, punctuation and its copied
   values), the year of a date, the words of an intent phrase or answer sentence once its first word
   has named the tool are '0'; the characters of a value that do pick it from its pool ("Pa" of
   Paris, which Prague shares only the "P" with), every digit and the character after a number (it
   could go on), the call-or-answer word ("need"/"have") and the space opening a second answer
   sentence are '1'. The string has one extra character for the end of the message (the end-of-turn
   token): '1' after a one-sentence answer (a second sentence could follow), else '0'. A token is
   reasoning under this truth if any of its characters is (a token is predictable only if all its
   characters are). Observation values are treated as unpredictable even where a table determines
   them (a translation, a conversion result).

SHAD labels tokens by predictability, so against the semantic roles a token that the output prefix
alone already determines can legitimately come out '0'; compare with the needs-input truth for that.

Everything is deterministic from ``--seed``: private ``random.Random`` instances (never the global
one), fixed pool order, no set/dict-order dependence.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

from rft_ds.demo.catalog import CALL_PREFIX, FINAL_PREFIX, TOOLS, TOOLS_BY_NAME, Tool

DEFAULT_OUTPUT_DIR = "data/demo"
DEFAULT_N_TRAIN = 1200
DEFAULT_N_HELDOUT = 200
DEFAULT_SEED = 0

FILE_NAMES = ("train.jsonl", "heldout.jsonl", "roles.jsonl")

# Share of samples per shape: one call / two calls for a two-part request / two user requests.
P_TWO_CALLS = 0.15
P_TWO_REQUESTS = 0.15
# Tool-call argument combinations whose stable hash is 0 mod HELDOUT_MOD are held-out only.
HELDOUT_MOD = 8

SYSTEM_HEADER = "You can call these tools:"
N_SYSTEM_TOOLS = 3  # tools listed in each system message (sampled from the 9 of TOOLS)


# --------------------------------------------------------------------------------------------
# Typed segments: a message is a list of (text, role) with role "0" (template) or "1" (slot).
# --------------------------------------------------------------------------------------------
class _Msg:
    def __init__(self):
        self.parts: list[tuple[str, str]] = []

    def t(self, text: str) -> "_Msg":
        return self._add(text, "0")

    def s(self, text: str) -> "_Msg":
        return self._add(text, "1")

    def _add(self, text: str, role: str) -> "_Msg":
        if text:
            self.parts.append((text, role))
        return self

    def content(self) -> str:
        return "".join(text for text, _ in self.parts)

    def roles(self) -> str:
        return "".join(role * len(text) for text, role in self.parts)


def _action_input(msg: _Msg, tool: Tool, args: dict) -> None:
    """`{"key": "value", "n": 12}` with keys and punctuation '0', value characters '1'."""
    start = len(msg.content())
    for i, (key, typ) in enumerate(tool.params):
        value = args[key]
        msg.t(("{" if i == 0 else ", ") + json.dumps(key) + ": ")
        if typ == "string":
            inner = json.dumps(value, ensure_ascii=False)[1:-1]
            assert inner == value, f"pool value needs JSON escaping: {value!r}"
            msg.t('"').s(inner).t('"')
        else:
            msg.s(json.dumps(value))
    msg.t("}")
    assert msg.content()[start:] == json.dumps(args, ensure_ascii=False)


def _call_message(tool: Tool, args: dict) -> _Msg:
    m = _Msg().t(CALL_PREFIX).s(tool.intent.format(**args)).t(".\nAction: ").s(tool.name)
    m.t("\nAction Input: ")
    _action_input(m, tool, args)
    return m


def _answer_message(answers: list[str]) -> _Msg:
    m = _Msg().t(FINAL_PREFIX)
    for i, sentence in enumerate(answers):
        m.t(" " if i else "").s(sentence).t(".")
    return m


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def _combo_key(tool: Tool, args: dict) -> str:
    return tool.name + "|" + json.dumps(args, sort_keys=True, ensure_ascii=False)


def is_heldout_combo(tool_name: str, args: dict) -> bool:
    """Stable split of the argument-combination space: held-out combos never appear in train."""
    key = _combo_key(TOOLS_BY_NAME[tool_name], args)
    return zlib.crc32(key.encode("utf-8")) % HELDOUT_MOD == 0


def _sample_args(rng: random.Random, tool: Tool, heldout: bool, avoid: list[dict]) -> dict:
    while True:
        args = tool.sample_args(rng)
        if is_heldout_combo(tool.name, args) == heldout and args not in avoid:
            return args


def _user_text(rng: random.Random, clauses: list[str]) -> str:
    prefix, suffix = rng.choice([("Please ", "."), ("Can you ", "?")])
    return prefix + " and ".join(clauses) + suffix


def _sample(rng: random.Random, sample_id: str, heldout: bool) -> tuple[dict, dict]:
    tools = [TOOLS[i] for i in rng.sample(range(len(TOOLS)), N_SYSTEM_TOOLS)]
    system = "\n".join([SYSTEM_HEADER] + [t.schema_line() for t in tools])
    messages = [{"role": "system", "content": system}]
    roles: dict[str, str] = {}

    def say(role: str, content: str) -> None:
        messages.append({"role": role, "content": content})

    def assistant(m: _Msg) -> None:
        roles[str(len(messages))] = m.roles()
        say("assistant", m.content())

    u = rng.random()
    shape = "two_calls" if u < P_TWO_CALLS else "two_requests" if u < P_TWO_CALLS + P_TWO_REQUESTS else "one"
    n_calls = 1 if shape == "one" else 2
    calls = []  # (tool, args, clause)
    for _ in range(n_calls):
        tool = rng.choice(tools)
        args = _sample_args(rng, tool, heldout, [a for t, a, _ in calls if t is tool])
        calls.append((tool, args, rng.choice(tool.clauses).format(**args)))

    turns = [calls] if shape == "two_calls" else [[c] for c in calls]
    for turn in turns:
        say("user", _user_text(rng, [clause for _, _, clause in turn]))
        answers = []
        for tool, args, _ in turn:
            assistant(_call_message(tool, args))
            obs = tool.observe(rng, args)
            say("tool", json.dumps(obs, ensure_ascii=False))
            answers.append(tool.answer(args, obs))
        assistant(_answer_message(answers))
    return {"id": sample_id, "messages": messages}, {"id": sample_id, "roles": roles}


def generate(n_train: int = DEFAULT_N_TRAIN, n_heldout: int = DEFAULT_N_HELDOUT,
             seed: int = DEFAULT_SEED) -> tuple[list[dict], list[dict], list[dict]]:
    """Pure: (train_samples, heldout_samples, roles); roles lists train then held-out samples.

    Train and held-out use separate rngs, so the held-out set does not depend on n_train.
    """
    train, heldout, roles = [], [], []
    for split, n, out in (("train", n_train, train), ("heldout", n_heldout, heldout)):
        rng = random.Random(f"rft-ds-demo:{seed}:{split}")
        for i in range(n):
            sample, role = _sample(rng, f"demo-{split}-{i:05d}", heldout=(split == "heldout"))
            out.append(sample)
            roles.append(role)
    return train, heldout, roles


def render(train: list[dict], heldout: list[dict], roles: list[dict]) -> dict[str, str]:
    """File name -> exact file text (the project's one JSON-lines encoding)."""
    from rft_ds.fsio import dumps_line

    return {
        "train.jsonl": "".join(dumps_line(s) for s in train),
        "heldout.jsonl": "".join(dumps_line(s) for s in heldout),
        "roles.jsonl": "".join(dumps_line(r) for r in roles),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo-data",
        help="write the seeded synthetic tool-use demo data set (train, heldout, roles)",
        description="Generate the synthetic ReAct tool-use demo data: train.jsonl, heldout.jsonl "
                    "(OpenAI messages JSONL) and roles.jsonl (ground-truth per-character "
                    "reasoning/boilerplate roles of every assistant message). Deterministic in --seed.",
    )
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="default: %(default)s")
    p.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN, help="default: %(default)s")
    p.add_argument("--n-heldout", type=int, default=DEFAULT_N_HELDOUT, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="default: %(default)s")
    p.set_defaults(func=run)


def stats(samples: list[dict]) -> dict[str, float]:
    conv = [sum(len(m["content"]) for m in s["messages"]) for s in samples]
    asst = [len(m["content"]) for s in samples for m in s["messages"] if m["role"] == "assistant"]
    multi = sum(1 for s in samples if sum(m["role"] == "assistant" for m in s["messages"]) > 2)
    return {
        "samples": len(samples),
        "multi_turn": multi,
        "avg_chars_conversation": sum(conv) / max(1, len(conv)),
        "max_chars_conversation": max(conv, default=0),
        "avg_chars_assistant": sum(asst) / max(1, len(asst)),
        "max_chars_assistant": max(asst, default=0),
    }


def run(args) -> int:
    from rft_ds.errors import ConfigError
    from rft_ds.fsio import atomic_write

    if args.n_train < 0 or args.n_heldout < 0:
        raise ConfigError("--n-train and --n-heldout must be >= 0")
    train, heldout, roles = generate(args.n_train, args.n_heldout, args.seed)
    out = Path(args.output_dir)
    for name, text in render(train, heldout, roles).items():
        with atomic_write(out / name) as f:
            f.write(text)
    for split, samples in (("train", train), ("heldout", heldout)):
        st = stats(samples)
        print(
            f"{out / (split + '.jsonl')}: {st['samples']} samples ({st['multi_turn']} multi-turn), "
            f"avg {st['avg_chars_conversation']:.0f} chars/conversation, "
            f"avg {st['avg_chars_assistant']:.0f} chars/assistant message",
            flush=True,
        )
    print(f"{out / 'roles.jsonl'}: {len(roles)} samples", flush=True)
    return 0
