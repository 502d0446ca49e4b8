"""The demo's tool catalogue: the value pools, the 9 tools (schema, argument sampler, request clauses,
Thought intent phrase, observation maker, answer sentence) and the fixed text around them in an
assistant message (`CALL_PREFIX`, `FINAL_PREFIX`).

One source for the two readers: `rft_ds.demo.generate` writes the samples from it, and
`rft_ds.demo.needs_input` (the third truth) enumerates every message it allows. Pools are lists in
a fixed order: iteration order is part of the determinism contract of `rft-ds demo-data`.
"""

from __future__ import annotations

import json
import random

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
    def __init__(self, name, description, params, sample_args, clauses, intent, observe, answer_template,
                 pools):
        self.name = name
        self.description = description
        self.params = params  # list of (key, json type), schema order == argument order
        self.sample_args = sample_args  # rng -> dict
        self.clauses = clauses  # two format strings over the argument names
        self.intent = intent  # format string over the argument names
        self.observe = observe  # (rng, args) -> dict (JSON object of the tool message)
        # The answer sentence without the closing period, as a format string over argument and
        # observation names: `answer` writes it, the third truth (`needs_input`) reads it.
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

    def answer(self, args: dict, obs: dict) -> str:
        """The answer sentence (without the closing period); numbers as their JSON text."""
        fields = {**args, **obs}
        return self.answer_template.format(**{k: v if isinstance(v, str) else _num(v) for k, v in fields.items()})


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
        "Flight {flight} from {origin} to {destination} costs {price_usd} USD",
        {"origin": CITIES, "destination": CITIES, "date": DATES, "flight": FLIGHT_CODES, "price_usd": NUMBER},
    ),
    Tool(
        "get_stock_price", "Stock closing price", [("symbol", "string"), ("date", "string")],
        _stock_args,
        ["get the {symbol} stock price on {date}", "look up {symbol} shares on {date}"],
        "the {symbol} price on {date}",
        lambda rng, a: {"close": round(rng.uniform(20, 900), 2)},
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
        "{amount} {from} is {result} {to}",
        {"amount": NUMBER, "from": CURRENCY_CODES, "to": CURRENCY_CODES, "result": NUMBER},
    ),
    Tool(
        "find_restaurants", "Restaurant search", [("city", "string"), ("cuisine", "string")],
        _restaurant_args,
        ["find {cuisine} food in {city}", "suggest a {cuisine} restaurant in {city}"],
        "{cuisine} restaurants in {city}",
        lambda rng, a: {"name": rng.choice(RESTAURANTS), "rating": rng.randint(30, 50) / 10},
        "Try {name} in {city}, rated {rating}",
        {"city": CITIES, "cuisine": CUISINES, "name": RESTAURANTS, "rating": NUMBER},
    ),
    Tool(
        "translate_text", "Translate text", [("text", "string"), ("language", "string")],
        _translate_args,
        ['translate "{text}" into {language}', 'say "{text}" in {language}'],
        'to translate "{text}" into {language}',
        _translate_obs,
        '"{text}" in {language} is "{translation}"',
        {"text": PHRASES, "language": LANGUAGES, "translation": TRANSLATED},
    ),
    Tool(
        "create_event", "Add a calendar event",
        [("title", "string"), ("date", "string"), ("time", "string")], _event_args,
        ['add "{title}" on {date} at {time}', 'schedule "{title}" for {date} at {time}'],
        'to add "{title}" on {date} at {time}',
        lambda rng, a: {"event_id": f"EV-{rng.randint(1000, 9999)}", "status": "created"},
        '"{title}" is booked on {date} at {time} ({event_id})',
        {"title": EVENT_TITLES, "date": DATES, "time": TIMES, "event_id": EVENT_IDS},
    ),
    Tool(
        "convert_units", "Unit conversion",
        [("value", "number"), ("from", "string"), ("to", "string")], _units_args,
        ["convert {value} {from} to {to}", "turn {value} {from} into {to}"],
        "to convert {value} {from} to {to}",
        _units_obs,
        "{value} {from} is {result} {to}",
        {"value": NUMBER, "from": UNIT_NAMES, "to": UNIT_NAMES, "result": NUMBER},
    ),
    Tool(
        "send_email", "Send an email", [("to", "string"), ("subject", "string")], _email_args,
        ['email {to} about "{subject}"', 'send {to} a mail titled "{subject}"'],
        'to email {to} about "{subject}"',
        lambda rng, a: {"message_id": f"M-{rng.randint(1000, 9999)}", "status": "sent"},
        "Your email to {to} was sent ({message_id})",
        {"to": NAMES, "subject": SUBJECTS, "message_id": MESSAGE_IDS},
    ),
]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


# --------------------------------------------------------------------------------------------
# The fixed text of the assistant messages around the tools' texts
# --------------------------------------------------------------------------------------------
CALL_PREFIX = "Thought: I need "
FINAL_PREFIX = "Thought: I have the answer.\nFinal Answer: "
