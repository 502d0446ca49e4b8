"""The HTML of `rft-ds view`: token chips, messages, samples, the header and the page (its CSS and
JavaScript are rft_ds/tools/assets/view.css and view.js). The data side is rft_ds/tools/view.py."""

from __future__ import annotations

import json

MISMATCH_LIST = 20  # ids listed per kind of data/masks mismatch; the rest are counted


# The static (no-JS) renderer mirrors the JS one below: same markup, same classes.
def _esc(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def _tok_text(s: str) -> str:
    if s == "":
        return '<span class="empty"></span>'
    return _esc(s).replace("\n", '<span class="nl"></span>\n')


def _fmt_ld(v: int) -> str:
    return ("+" if v >= 0 else "-") + f"{abs(v) / 1000:.3f}"


def pct(r: int, n: int) -> str:
    return f"{100 * r / n:.1f}%" if n else "n/a"


def _turn_html(m: dict, vocab: dict) -> str:
    ids, lab, ld = m.get("ids", []), m.get("lab", ""), m.get("ld")
    h = []
    for k, i in enumerate(ids):
        r = lab[k] == "1"
        t = f"LD={_fmt_ld(ld[k])} " if ld and ld[k] is not None else ""
        h.append(f'<span class="tok {"tok-r" if r else "tok-b"}" title="{t}{"reasoning" if r else "boilerplate"}'
                 f' · token {i}">{_tok_text(vocab[str(i)])}</span>')
    if m.get("rest"):
        why = "not labeled: no masks turn for this message" if m.get("nolabel") else \
            "not labeled: past the turn's labeled tokens (truncated)"
        h.append(f'<span class="tok tok-u" title="{why}">{_tok_text(m["rest"])}</span>')
    return "".join(h)


def _msg_html(m: dict, vocab: dict) -> str:
    role = _esc(m["role"])
    if "text" in m:
        return (f'<div class="msg role-{role}"><div class="role">{role}</div>'
                f'<div class="text">{_esc(m["text"]) or "<i>(empty)</i>"}</div></div>')
    n = len(m.get("ids", []))
    r = m.get("lab", "").count("1")
    info = "no labels" if m.get("nolabel") else f"{n} tokens · {pct(r, n)} reasoning"
    if m.get("rest") and not m.get("nolabel"):
        info += " · truncated"
    return (f'<div class="msg role-assistant"><div class="role">assistant <small>message {m["m"]} · {info}'
            f'</small></div><div class="toks">{_turn_html(m, vocab)}</div></div>')


def _sstat(r: int, n: int) -> str:
    return f"{pct(r, n)} reasoning · {n} tokens" if n else "no labeled tokens"


def _sample_html(s: dict, idx: int, vocab: dict) -> str:
    share = 100 * s["r"] / s["n"] if s["n"] else 0
    notes = "".join(f'<div class="note">{_esc(x)}</div>' for x in s["notes"])
    return (f'<section class="sample" id="s-{idx}" data-id="{_esc(s["id"])}"><div class="shead">'
            f'<span class="sidx">#{idx + 1}</span> <span class="sid">{_esc(s["id"])}</span>'
            f'<span class="sstat"><span class="bar{"" if s["n"] else " none"}"><span style="width:{share:.1f}%">'
            f'</span></span>{_sstat(s["r"], s["n"])}</span></div>{notes}'
            + "".join(_msg_html(m, vocab) for m in s["msgs"]) + "</section>")


def stat_html(value: str, label: str) -> str:
    return f'<div class="stat"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'


def _id_list(ids: list[str]) -> str:
    shown = ", ".join(f"<code>{_esc(i)}</code>" for i in ids[:MISMATCH_LIST])
    return shown + (f" … and {len(ids) - MISMATCH_LIST} more" if len(ids) > MISMATCH_LIST else "")


def _asset(name: str) -> str:
    """A file of rft_ds/tools/assets/ (the page's CSS and JavaScript, kept as real files)."""
    from importlib.resources import files

    return files("rft_ds.tools").joinpath("assets", name).read_text(encoding="utf-8")


def header_html(masks_path: str, data_path: str, tokenizer_source: str, meta: dict, stats: str,
                 warnings: list[tuple[str, list[str]]]) -> str:
    """The sub-title, stats, legend and warnings of the page's header."""
    margin = meta.get("margin")
    sub = [f"masks <code>{_esc(str(masks_path))}</code>", f"data <code>{_esc(str(data_path))}</code>",
           f"tokenizer <code>{_esc(tokenizer_source)}</code>"]
    if meta.get("shad"):
        sub.append(f"SHAD model <code>{_esc(str(meta['shad']))}</code>")
    if margin is not None:
        sub.append(f"margin {_esc(str(margin))}")
    warn_html = ('<div class="warn">' + "<br>".join(_esc(w) + (" " + _id_list(ids) if ids else "")
                                                   for w, ids in warnings) + "</div>") if warnings else ""
    if meta.get("method") == "regex":  # `label --method regex`: loss_diff is a sign, not nats
        sub.append(f"boilerplate regex <code>{_esc(str(meta.get('pattern')))}</code>")
        rule, hover = "a visible character the boilerplate regex does not match", "its loss_diff: +1 reasoning, -1 boilerplate"
    else:
        rule = f"LD &gt; {_esc(str(margin))}" if margin is not None else "LD above the margin"
        hover = "its LD = loss(SHAD model) − loss(base model), nats"
    legend = (f'<div class="legend"><span><span class="chip tok-r">reasoning</span> {rule}</span>'
              '<span><span class="chip tok-b">boilerplate</span> otherwise</span>'
              '<span><span class="chip tok-u">unlabeled</span> not covered by the masks (truncated)</span>'
              f'<span>hover a token for {hover}</span></div>')
    return (f'<div class="sub">{" · ".join(sub)}</div>\n<div class="stats">{stats}</div>\n'
            f'{legend}{warn_html}')


def page_html(name: str, header: str, samples: list[dict], vocab: dict, page_size: int) -> tuple[str, int]:
    """The whole self-contained page: the first page rendered statically, the rest by the script."""
    data_json = json.dumps({"page_size": page_size, "vocab": vocab, "samples": samples},
                           ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data_json = data_json.replace("<", "\\u003c")  # never closes the <script> element
    first = "".join(_sample_html(s, i, vocab) for i, s in enumerate(samples[:page_size]))
    pages = max(1, -(-len(samples) // page_size))
    title = f"token labels · {name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_asset("view.css")}</style></head>
<body>
<header><h1>{_esc(title)}</h1>
{header}
</header>
<nav id="nav" style="display:none"><span class="where" id="where"></span>
<button id="prev" title="previous page (←)">‹ Prev</button><select id="page" title="page"></select>
<button id="next" title="next page (→)">Next ›</button>
<form id="goform" style="display:flex;gap:6px;margin:0"><input id="q" list="ids" placeholder="go to sample id…" size="22">
<button type="submit">Go</button></form><span id="nomatch" class="note"></span><datalist id="ids"></datalist></nav>
<noscript><div class="warn" style="margin:10px 22px">JavaScript is off: only the first page
({min(page_size, len(samples))} of {len(samples)} samples) is shown.</div></noscript>
<main id="samples" data-renderer="static" data-page="1" data-pages="{pages}">{first}</main>
<script type="application/json" id="rft-data">{data_json}</script>
<script>{_asset("view.js")}</script>
</body></html>
"""
    return page, pages
