"""`rft-ds demo-data`: a small, seeded, synthetic ToolBench/ReAct-style tool-use data set.

The bundled demo (``data/demo/``) must run end to end on a CPU in minutes, with a 2-layer Llama of
hidden size 64-128. So every sample is short, the vocabulary is small (about 30 cities, 20 names,
a few pools of symbols, currencies, units, titles), the template text is the same in every sample
and every tool-call argument value is a verbatim copy of a string in the user message: a model that
reads its input can predict it, a model tuned on shuffled (input, output) pairs cannot. That is
exactly the contrast SHAD (arXiv 2412.14780) relies on.

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
2. **prefix-aware** (``rft_ds.demo.report.prefix_aware``, derived from 1): minus any word or value
   already written earlier in the same message (the Action Input repeating the Thought's values) and
   the non-alphanumeric characters inside slots. It still counts as reasoning what the earlier text
   *implies* without repeating it: the tool name after a Thought that names the task, the fixed words
   of an intent phrase after its first word.
3. **needs-input** (``needs_input(content)`` below, computed from the message text and this module's
   templates and value pools): a character is '1' iff the message's own earlier text does not
   determine it -- among all assistant messages this generator can write that begin with the same
   text, more than one next character (or the end of the message) is possible. That is exactly what a
   model tuned on shuffled pairs can and cannot predict, so it is the truth SHAD's LD aims at. The
   tool name, the Action Input (keys, punctuation and its copied values), the year of a date, the
   words of an intent phrase or answer sentence once its first word has named the tool are '0';
   the characters of a value that do pick it from its pool ("Pa" of Paris, which Prague shares
   only the "P" with), every digit and the character after a number (it could go on), the
   call-or-answer word ("need"/"have") and the space opening a second answer sentence are '1'. The
   string has one extra character for the end of the message (the end-of-turn token): '1' after a
   one-sentence answer (a second sentence could follow), else '0'. A token is reasoning under this
   truth if any of its characters is (a token is predictable only if all its characters are).
   Observation values are treated as unpredictable even where a table determines them (a
   translation, a conversion result).

SHAD labels tokens by predictability, so against the semantic roles a token that the output prefix
alone already determines can legitimately come out '0'; compare with the needs-input truth for that.

Everything is deterministic from ``--seed``: private ``random.Random`` instances (never the global
one), fixed pool order, no set/dict-order dependence.
"""

from __future__ import annotations

import functools
import json
import random
import re
import zlib
from pathlib import Path

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
# Value pools (lists, fixed order: iteration order is part of the determinism contract)
# --------------------------------------------------------------------------------------------
CITIES = [
    "Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Warsaw", "Oslo", "Dublin",
    "London", "Athens", "Zurich", "Boston", "Chicago", "Denver", "Seattle", "Austin", "Miami",
    "Toronto", "Tokyo", "Seoul", "Delhi", "Dubai", "Cairo", "Lima", "Sydney", "Osaka", "Bangkok",
    "Nairobi",
]
NAMES = [
    "Alice", "Bob", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Irene", "Jonas", "Keiko",
    "Liam", "Maria", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara",
]
SUBJECTS = [
    "Budget review", "Team lunch", "Trip plan", "Q3 report", "Invoice", "Party", "Project update",
    "Weekly sync", "New office", "Holiday",
]
EVENT_TITLES = [
    "Dentist", "Team meeting", "Gym", "Book club", "Doctor visit", "Piano lesson", "Code review",
    "Yoga", "Haircut", "Date night",
]
CUISINES = [
    "Italian", "Thai", "Indian", "Mexican", "Japanese", "Greek", "French", "Korean", "Vietnamese",
    "Turkish",
]
RESTAURANTS = [
    "Casa Bella", "Golden Lotus", "Blue Olive", "Saffron House", "Little Kyoto", "El Sol",
    "Bistro Nord", "Green Basil", "Red Lantern", "Spice Route", "Ocean Grill", "The Oak Table",
]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "stormy", "clear"]
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "NFLX", "IBM", "INTC", "ORCL", "AMD"]
AIRLINES = ["AF", "LH", "BA", "IB", "KL", "UA", "DL", "AA", "JL", "EK"]
# Value of one unit in USD (rough, fixed: the demo only needs consistency).
CURRENCIES = [
    ("USD", 1.0), ("EUR", 1.08), ("GBP", 1.27), ("JPY", 0.0067), ("CHF", 1.13), ("CAD", 0.73),
    ("AUD", 0.66), ("INR", 0.012),
]
# (from, to, factor, offset): to = from * factor + offset.
UNIT_PAIRS = [
    ("km", "miles", 0.621371, 0.0), ("miles", "km", 1.609344, 0.0),
    ("kg", "pounds", 2.204623, 0.0), ("pounds", "kg", 0.453592, 0.0),
    ("meters", "feet", 3.28084, 0.0), ("feet", "meters", 0.3048, 0.0),
    ("liters", "gallons", 0.264172, 0.0), ("gallons", "liters", 3.785412, 0.0),
    ("celsius", "fahrenheit", 1.8, 32.0), ("fahrenheit", "celsius", 5.0 / 9.0, -160.0 / 9.0),
]
LANGUAGES = ["French", "German", "Italian", "Spanish"]
# ASCII-only phrases and translations (French, German, Italian, Spanish).
TRANSLATIONS = [
    ("thank you", ("merci", "danke", "grazie", "gracias")),
    ("good night", ("bonne nuit", "gute Nacht", "buona notte", "buenas noches")),
    ("welcome", ("bienvenue", "willkommen", "benvenuto", "bienvenido")),
    ("I am hungry", ("j'ai faim", "ich habe Hunger", "ho fame", "tengo hambre")),
    ("good evening", ("bonsoir", "guten Abend", "buonasera", "buenas tardes")),
    ("hello", ("bonjour", "hallo", "ciao", "hola")),
    ("excuse me", ("excusez-moi", "Entschuldigung", "scusi", "disculpe")),
    ("I love you", ("je t'aime", "ich liebe dich", "ti amo", "te quiero")),
    ("thanks a lot", ("merci beaucoup", "vielen Dank", "grazie mille", "muchas gracias")),
    ("water", ("l'eau", "das Wasser", "l'acqua", "el agua")),
]


# Every string a field can take, for the third truth (`needs_input`): the same ranges as the samplers
# and observation makers below. NUMBER: any JSON number (its characters are never predictable).
NUMBER = "number"
DATES = [f"2025-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29)]
TIMES = [f"{h:02d}:{mm}" for h in range(8, 19) for mm in ("00", "15", "30", "45")]
CURRENCY_CODES = [c for c, _ in CURRENCIES]
UNIT_NAMES = sorted({u for f, t, _, _ in UNIT_PAIRS for u in (f, t)})
PHRASES = [t for t, _ in TRANSLATIONS]
TRANSLATED = [x for _, outs in TRANSLATIONS for x in outs]
FLIGHT_CODES = [f"{a}{n}" for a in AIRLINES for n in range(10, 1000)]
EVENT_IDS = [f"EV-{n}" for n in range(1000, 10000)]
MESSAGE_IDS = [f"M-{n}" for n in range(1000, 10000)]


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(8, 18):02d}:{rng.choice(['00', '15', '30', '45'])}"


def _num(x: float) -> str:
    """The one text form of an observation number, shared by the tool message and the answer."""
    return json.dumps(x)


def _two_distinct(rng: random.Random, pool: list) -> tuple:
    a, b = rng.sample(range(len(pool)), 2)
    return pool[a], pool[b]


# --------------------------------------------------------------------------------------------
# Tools. Each tool: schema (name, description, parameter types), argument sampler, user-request
# clauses (two phrasings), the Thought intent phrase, an observation maker and the answer sentence.
# Every string argument value appears verbatim in every user clause; numbers appear as their JSON
# text. Observations are drawn from the sample's rng (or computed from the arguments).
# --------------------------------------------------------------------------------------------
class Tool:
    def __init__(self, name, description, params, sample_args, clauses, intent, observe, answer,
                 answer_template, pools):
        self.name = name
        self.description = description
        self.params = params  # list of (key, json type), schema order == argument order
        self.sample_args = sample_args  # rng -> dict
        self.clauses = clauses  # two format strings over the argument names
        self.intent = intent  # format string over the argument names
        self.observe = observe  # (rng, args) -> dict (JSON object of the tool message)
        self.answer = answer  # (args, obs) -> sentence without the closing period
        # The same sentence as a format string over argument and observation names (numbers as their
        # JSON text); `answer(args, obs) == answer_template.format(...)` is checked by the tests. Only
        # the third truth (`needs_input`) reads it.
        self.answer_template = answer_template
        # field name -> the strings that field can take (a list), or NUMBER (any JSON number). Every
        # argument and every observation field quoted in the answer has one.
        self.pools = pools

    def schema_line(self) -> str:
        schema = {
            "name": self.name,
            "description": self.description,
            "parameters": {k: t for k, t in self.params},
        }
        return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _weather_args(rng):
    return {"city": rng.choice(CITIES), "date": _date(rng)}


def _flight_args(rng):
    a, b = _two_distinct(rng, CITIES)
    return {"origin": a, "destination": b, "date": _date(rng)}


def _stock_args(rng):
    return {"symbol": rng.choice(SYMBOLS), "date": _date(rng)}


def _currency_args(rng):
    a, b = _two_distinct(rng, CURRENCIES)
    return {"amount": rng.randint(5, 999), "from": a[0], "to": b[0]}


def _restaurant_args(rng):
    return {"city": rng.choice(CITIES), "cuisine": rng.choice(CUISINES)}


def _translate_args(rng):
    return {"text": rng.choice(TRANSLATIONS)[0], "language": rng.choice(LANGUAGES)}


def _event_args(rng):
    return {"title": rng.choice(EVENT_TITLES), "date": _date(rng), "time": _time(rng)}


def _units_args(rng):
    pair = rng.choice(UNIT_PAIRS)
    return {"value": rng.randint(1, 300), "from": pair[0], "to": pair[1]}


def _email_args(rng):
    return {"to": rng.choice(NAMES), "subject": rng.choice(SUBJECTS)}


def _currency_obs(rng, a):
    rate = dict(CURRENCIES)
    return {"result": round(a["amount"] * rate[a["from"]] / rate[a["to"]], 2)}


def _units_obs(rng, a):
    for f, t, factor, offset in UNIT_PAIRS:
        if (f, t) == (a["from"], a["to"]):
            return {"result": round(a["value"] * factor + offset, 2)}
    raise AssertionError(a)


def _translate_obs(rng, a):
    for text, outs in TRANSLATIONS:
        if text == a["text"]:
            return {"translation": outs[LANGUAGES.index(a["language"])]}
    raise AssertionError(a)


TOOLS = [
    Tool(
        "get_weather", "Weather forecast", [("city", "string"), ("date", "string")], _weather_args,
        ["check the weather in {city} on {date}", "get the forecast for {city} on {date}"],
        "the weather in {city} on {date}",
        lambda rng, a: {"condition": rng.choice(CONDITIONS), "temp_c": rng.randint(-5, 35)},
        lambda a, o: f"In {a['city']} on {a['date']} it will be {o['condition']}, {_num(o['temp_c'])} C",
        "In {city} on {date} it will be {condition}, {temp_c} C",
        {"city": CITIES, "date": DATES, "condition": CONDITIONS, "temp_c": NUMBER},
    ),
    Tool(
        "search_flights", "Find flights",
        [("origin", "string"), ("destination", "string"), ("date", "string")], _flight_args,
        ["find flights from {origin} to {destination} on {date}",
         "book a flight on {date} from {origin} to {destination}"],
        "flights from {origin} to {destination} on {date}",
        lambda rng, a: {"flight": f"{rng.choice(AIRLINES)}{rng.randint(10, 999)}",
                        "price_usd": rng.randint(80, 1200)},
        lambda a, o: f"Flight {o['flight']} from {a['origin']} to {a['destination']} costs "
                     f"{_num(o['price_usd'])} USD",
        "Flight {flight} from {origin} to {destination} costs {price_usd} USD",
        {"origin": CITIES, "destination": CITIES, "date": DATES, "flight": FLIGHT_CODES, "price_usd": NUMBER},
    ),
    Tool(
        "get_stock_price", "Stock closing price", [("symbol", "string"), ("date", "string")],
        _stock_args,
        ["get the {symbol} stock price on {date}", "look up {symbol} shares on {date}"],
        "the {symbol} price on {date}",
        lambda rng, a: {"close": round(rng.uniform(20, 900), 2)},
        lambda a, o: f"{a['symbol']} closed at {_num(o['close'])} USD on {a['date']}",
        "{symbol} closed at {close} USD on {date}",
        {"symbol": SYMBOLS, "date": DATES, "close": NUMBER},
    ),
    Tool(
        "convert_currency", "Currency exchange",
        [("amount", "number"), ("from", "string"), ("to", "string")],
        _currency_args,
        ["convert {amount} {from} to {to}",
         "change {amount} {from} into {to}"],
        "to convert {amount} {from} to {to}",
        _currency_obs,
        lambda a, o: f"{a['amount']} {a['from']} is {_num(o['result'])} {a['to']}",
        "{amount} {from} is {result} {to}",
        {"amount": NUMBER, "from": CURRENCY_CODES, "to": CURRENCY_CODES, "result": NUMBER},
    ),
    Tool(
        "find_restaurants", "Restaurant search", [("city", "string"), ("cuisine", "string")],
        _restaurant_args,
        ["find {cuisine} food in {city}", "suggest a {cuisine} restaurant in {city}"],
        "{cuisine} restaurants in {city}",
        lambda rng, a: {"name": rng.choice(RESTAURANTS), "rating": rng.randint(30, 50) / 10},
        lambda a, o: f"Try {o['name']} in {a['city']}, rated {_num(o['rating'])}",
        "Try {name} in {city}, rated {rating}",
        {"city": CITIES, "cuisine": CUISINES, "name": RESTAURANTS, "rating": NUMBER},
    ),
    Tool(
        "translate_text", "Translate text", [("text", "string"), ("language", "string")],
        _translate_args,
        ['translate "{text}" into {language}', 'say "{text}" in {language}'],
        'to translate "{text}" into {language}',
        _translate_obs,
        lambda a, o: f'"{a["text"]}" in {a["language"]} is "{o["translation"]}"',
        '"{text}" in {language} is "{translation}"',
        {"text": PHRASES, "language": LANGUAGES, "translation": TRANSLATED},
    ),
    Tool(
        "create_event", "Add a calendar event",
        [("title", "string"), ("date", "string"), ("time", "string")], _event_args,
        ['add "{title}" on {date} at {time}', 'schedule "{title}" for {date} at {time}'],
        'to add "{title}" on {date} at {time}',
        lambda rng, a: {"event_id": f"EV-{rng.randint(1000, 9999)}", "status": "created"},
        lambda a, o: f'"{a["title"]}" is booked on {a["date"]} at {a["time"]} ({o["event_id"]})',
        '"{title}" is booked on {date} at {time} ({event_id})',
        {"title": EVENT_TITLES, "date": DATES, "time": TIMES, "event_id": EVENT_IDS},
    ),
    Tool(
        "convert_units", "Unit conversion",
        [("value", "number"), ("from", "string"), ("to", "string")], _units_args,
        ["convert {value} {from} to {to}", "turn {value} {from} into {to}"],
        "to convert {value} {from} to {to}",
        _units_obs,
        lambda a, o: f"{a['value']} {a['from']} is {_num(o['result'])} {a['to']}",
        "{value} {from} is {result} {to}",
        {"value": NUMBER, "from": UNIT_NAMES, "to": UNIT_NAMES, "result": NUMBER},
    ),
    Tool(
        "send_email", "Send an email", [("to", "string"), ("subject", "string")], _email_args,
        ['email {to} about "{subject}"', 'send {to} a mail titled "{subject}"'],
        'to email {to} about "{subject}"',
        lambda rng, a: {"message_id": f"M-{rng.randint(1000, 9999)}", "status": "sent"},
        lambda a, o: f"Your email to {a['to']} was sent ({o['message_id']})",
        "Your email to {to} was sent ({message_id})",
        {"to": NAMES, "subject": SUBJECTS, "message_id": MESSAGE_IDS},
    ),
]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


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
    m = _Msg().t("Thought: I need ").s(tool.intent.format(**args)).t(".\nAction: ").s(tool.name)
    m.t("\nAction Input: ")
    _action_input(m, tool, args)
    return m


def _answer_message(answers: list[str]) -> _Msg:
    m = _Msg().t("Thought: I have the answer.\nFinal Answer: ")
    for i, sentence in enumerate(answers):
        m.t(" " if i else "").s(sentence).t(".")
    return m


# --------------------------------------------------------------------------------------------
# The third truth: does a character need the input, given the message's own earlier text?
# --------------------------------------------------------------------------------------------
CALL_PREFIX = "Thought: I need "
FINAL_PREFIX = "Thought: I have the answer.\nFinal Answer: "
_END = None  # the "character" after the last one: the end of the message (its end-of-turn token)
_WHOLE_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_TEMPLATES: list[list[tuple]] = []


def _format_items(fmt: str, pools: dict) -> list[tuple]:
    """A format string as items: ("lit", text) and ("slot", field name, pool)."""
    import string

    items = []
    for lit, field, _, _ in string.Formatter().parse(fmt):
        if lit:
            items.append(("lit", lit))
        if field is not None:
            items.append(("slot", field, pools[field]))
    return items


def message_templates() -> list[list[tuple]]:
    """Every assistant message the generator can write, as item sequences: ("lit", text), ("slot",
    name, pool) (any string of the pool, or any JSON number) and ("copy", name) (the text an earlier
    slot of the same message took: the Action Input repeats the Thought's values). 9 call messages,
    9 one-sentence and 81 two-sentence final answers."""
    if _TEMPLATES:
        return _TEMPLATES
    for tool in TOOLS:
        items = [("lit", CALL_PREFIX)] + _format_items(tool.intent, tool.pools)
        items.append(("lit", ".\nAction: " + tool.name + "\nAction Input: "))
        for i, (key, typ) in enumerate(tool.params):
            items.append(("lit", ("{" if i == 0 else ", ") + json.dumps(key) + ": " + ('"' if typ == "string" else "")))
            items.append(("copy", key))
            if typ == "string":
                items.append(("lit", '"'))
        items.append(("lit", "}"))
        _TEMPLATES.append(items)
    sentences = [_format_items(t.answer_template, t.pools) for t in TOOLS]
    for a in sentences:
        _TEMPLATES.append([("lit", FINAL_PREFIX)] + a + [("lit", ".")])
    for a in sentences:
        for b in sentences:
            _TEMPLATES.append([("lit", FINAL_PREFIX)] + a + [("lit", ". ")] + b + [("lit", ".")])
    return _TEMPLATES


_POOLS: dict[int, list] = {}


def _pool_key(pool: list) -> int:
    _POOLS.setdefault(id(pool), pool)
    return id(pool)


@functools.lru_cache(maxsize=None)
def _pool_state(pool_id: int, buf: str) -> tuple[frozenset, bool]:
    """(possible next characters, whether `buf` is a whole value) inside a pool slot."""
    pool = _POOLS[pool_id]
    n = len(buf)
    return frozenset(v[n] for v in pool if len(v) > n and v.startswith(buf)), buf in pool


def _item_text(item: tuple, bind: tuple) -> str:
    return item[1] if item[0] == "lit" else dict(bind)[item[1]]


def _expand(state, out: set) -> None:
    """Add `state` = (template, item, consumed text of the item, bindings) to `out`, following every
    way the current item can be complete (epsilon moves)."""
    t, k, buf, bind = state
    items = message_templates()[t]
    if k == len(items):
        out.add(state)
        return
    item = items[k]
    if item[0] != "slot":
        if len(buf) < len(_item_text(item, bind)):
            out.add(state)
        else:
            _expand((t, k + 1, "", bind), out)
        return
    done = bind + ((item[1], buf),)
    if item[2] == NUMBER:
        out.add(state)  # a number can always take another digit
        if _WHOLE_NUMBER.fullmatch(buf):
            _expand((t, k + 1, "", done), out)
        return
    chars, whole = _pool_state(_pool_key(item[2]), buf)
    if chars:
        out.add(state)
    if whole:
        _expand((t, k + 1, "", done), out)


def _next_chars(state) -> frozenset:
    t, k, buf, bind = state
    items = message_templates()[t]
    if k == len(items):
        return frozenset([_END])
    item = items[k]
    if item[0] != "slot":
        return frozenset(_item_text(item, bind)[len(buf)])
    if item[2] == NUMBER:
        return _number_next(buf)
    return _pool_state(_pool_key(item[2]), buf)[0]


@functools.lru_cache(maxsize=None)
def _number_next(buf: str) -> frozenset:
    """Characters that can extend `buf`, a prefix of a JSON number (-?digits, optionally .digits)."""
    nxt = set("0123456789")
    if not buf:
        nxt.add("-")
    elif buf[-1].isdigit() and "." not in buf:
        nxt.add(".")
    return frozenset(nxt)


def _in_slot(state) -> bool:
    t, k, _, _ = state
    items = message_templates()[t]
    return k < len(items) and items[k][0] == "slot"


def needs_input_kinds(content: str) -> str:
    """`needs_input` with the kind of every open character: '0' determined by the text before it;
    'v' open, and every way to go on is inside a value (which city, which digit: the value is
    chosen); 't' open where the template itself is chosen (call or answer, which tool's phrase, one
    or two answer sentences, where a number ends). len(content) + 1 characters, the last for the end
    of the message. Raises ValueError for text the generator cannot write."""
    states: set = set()
    for t in range(len(message_templates())):
        _expand((t, 0, "", ()), states)
    out = []
    for i, ch in enumerate(content):
        nexts = [(s, _next_chars(s)) for s in states]
        opts = frozenset().union(*(n for _, n in nexts))
        if ch not in opts:
            raise ValueError(f"not a demo assistant message: {content[:i + 1]!r} cannot continue with {ch!r}")
        out.append("0" if len(opts) == 1 else "v" if all(_in_slot(s) for s, _ in nexts) else "t")
        new: set = set()
        for (t, k, buf, bind), n in nexts:
            if ch in n:
                _expand((t, k, buf + ch, bind), new)
        states = new
    opts = frozenset().union(*(_next_chars(s) for s in states))
    if _END not in opts:
        raise ValueError(f"not a demo assistant message: {content!r} is incomplete")
    out.append("0" if len(opts) == 1 else "t")
    return "".join(out)


def needs_input(content: str) -> str:
    """The third truth of one assistant message: one '0'/'1' per content character, plus one for the
    end of the message (its end-of-turn token), so len(content) + 1 characters.

    '1' iff the message's own earlier text does not determine the character: among all messages the
    generator can write (`message_templates`: every tool, every value of every pool) that begin with
    the same text, more than one next character (or the end) is possible. A value the template
    copies from earlier in the message (the Action Input repeating the Thought) is determined. Raises
    ValueError for text the generator cannot write. `needs_input_kinds` splits the '1's into value
    choices and template choices."""
    return needs_input_kinds(content).replace("v", "1").replace("t", "1")


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
