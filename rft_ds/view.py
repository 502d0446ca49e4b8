"""`rft-ds view`: a masks file as a self-contained HTML page.

Every sample's conversation, with each trained assistant message shown token by token,
coloured by its SHAD label (reasoning green, boilerplate yellow; assistant text the masks do not
cover, e.g. cut by --max-seq-len, grey) and the token's LD on hover. The page is one HTML file with
inline CSS and JS and no network access. All samples are embedded as JSON (token ids plus a table
of the decoded text of each id used) and JS renders only the visible page (--page-size samples),
so a file of ~10k samples stays fast; the first page is also rendered statically, so the file is
readable with JS off. Paging: prev/next buttons (or the arrow keys), a page dropdown, a go-to-id box,
and `#page=N` / `#id=ID` in the URL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from rft_ds.errors import ConfigError, MasksError
from rft_ds.fsio import atomic_write

DEFAULT_PAGE_SIZE = 20
MISMATCH_LIST = 20  # ids listed per kind of data/masks mismatch; the rest are counted


def _meta(masks_path: str) -> dict:
    from rft_ds.masks import meta_path, read_meta

    try:
        meta = read_meta(masks_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasksError(f"{meta_path(masks_path)}: unreadable sidecar: {e}") from None
    return meta if isinstance(meta, dict) else {}


def load_tokenizer(masks_path: str, tokenizer_dir: str | None):
    """--tokenizer, else the base model recorded in the masks sidecar, else a clear error."""
    from rft_ds.masks import meta_path

    source = tokenizer_dir
    origin = "--tokenizer"
    if not source:
        base = _meta(masks_path).get("base")
        if not base:
            side = meta_path(masks_path)
            why = f"{side} has no 'base' entry" if side.exists() else f"there is no sidecar {side}"
            raise ConfigError(f"no tokenizer to decode the token ids of {masks_path}: {why}; "
                              "pass --tokenizer DIR (the base model or tokenizer directory used by `rft-ds label`)")
        source, origin = str(base), f"'base' in {meta_path(masks_path)}"
        hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
        if not os.path.exists(source) and not hub_id:
            raise ConfigError(f"tokenizer {source!r} ({origin}) does not exist on this machine; "
                              "pass --tokenizer DIR")
    elif not os.path.isdir(source):
        raise ConfigError(f"--tokenizer {source}: not a directory")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot load a tokenizer from {source} ({origin}): {e}") from None
    # As rft_ds.modeling.load_tokenizer (which `rft-ds label` uses) does, so fingerprints compare.
    from rft_ds.data.render import ensure_chat_template

    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    ensure_chat_template(tok)
    return tok, source


class TokenText:
    """The text of one token id, decoded alone (`tokenizer.decode([id])`) and cached per id.

    SentencePiece decoders drop the leading space of a sequence's first piece, so a lone `▁word`
    decodes to "word"; the space is put back so the pieces of a turn join to its text.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.n = len(tokenizer)
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.cache: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        s = self.cache.get(i)
        if s is None:
            if not isinstance(i, int) or not 0 <= i < self.n:
                s = f"<id {i}?>"
            else:
                try:
                    s = self.tok.decode([i])
                    piece = self.tok.convert_ids_to_tokens(i)
                    if isinstance(piece, str) and piece.startswith("\u2581") and not s[:1].isspace():
                        s = " " + s
                except Exception:  # a tokenizer that cannot decode this id alone
                    s = f"<id {i}?>"
            self.cache[i] = s
        return s


def uncovered_text(content: str, pieces: list[str], last_is_special: bool) -> str:
    """The end of an assistant message's text that its turn's tokens do not cover (truncation)."""
    joined = "".join(pieces)
    lcp = len(os.path.commonprefix([joined, content]))
    if lcp >= len(content) or last_is_special:
        return ""
    if lcp == len(joined):
        return content[lcp:]
    # The pieces do not spell the text exactly (lossy per-token decode, e.g. split UTF-8 bytes):
    # estimate by length.
    return content[min(len(joined), len(content)):]


def _ld_milli(x) -> int | None:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return int(round(x * 1000))


def _turn_payload(turn: dict, message: int, content: str | None, text: TokenText, vocab: dict) -> dict:
    ids = list(turn["token_ids"])
    pieces = []
    for i in ids:
        s = text(i)
        vocab[str(i)] = s
        pieces.append(s)
    out = {"role": "assistant", "m": message, "ids": ids, "lab": "".join(str(x) for x in turn["labels"])}
    ld = turn.get("loss_diff")
    if ld is not None:
        out["ld"] = [_ld_milli(x) for x in ld]
    if content is not None:
        rest = uncovered_text(content, pieces, bool(ids) and ids[-1] in text.special)
        if rest:
            out["rest"] = rest
    return out


def sample_payload(sid: str, conv, rec: dict | None, text: TokenText, vocab: dict) -> dict:
    """One sample as embedded in the page. conv (from --data) or rec (from the masks) may be None."""
    msgs: list[dict] = []
    notes: list[str] = []
    turns = {t["message"]: t for t in rec["turns"]} if rec else {}
    if conv is None:
        notes.append("not in --data: only the labeled assistant tokens are shown")
    else:
        if rec is None:
            notes.append("not in the masks file: no labels")
        for i, m in enumerate(conv.messages):
            if m["role"] != "assistant":
                msgs.append({"role": m["role"], "text": m["content"]})
            elif i in turns:
                msgs.append(_turn_payload(turns.pop(i), i, m["content"], text, vocab))
            else:
                msgs.append({"role": "assistant", "m": i, "rest": m["content"], "nolabel": 1})
        if turns and rec is not None:
            bad = ", ".join(str(k) for k in sorted(turns))
            notes.append(f"masks label message(s) {bad}, which are not assistant messages of this sample in "
                         "--data (data and masks disagree); their tokens are shown at the end")
    for i in sorted(turns):
        msgs.append(_turn_payload(turns[i], i, None, text, vocab))
    n = sum(len(m.get("ids", ())) for m in msgs)
    r = sum(m.get("lab", "").count("1") for m in msgs)
    return {"id": sid, "n": n, "r": r, "notes": notes, "msgs": msgs}


# The static (no-JS) renderer mirrors the JS one below: same markup, same classes.
def _esc(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def _tok_text(s: str) -> str:
    if s == "":
        return '<span class="empty"></span>'
    return _esc(s).replace("\n", '<span class="nl"></span>\n')


def _fmt_ld(v: int) -> str:
    return ("+" if v >= 0 else "-") + f"{abs(v) / 1000:.3f}"


def _pct(r: int, n: int) -> str:
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
    info = "no labels" if m.get("nolabel") else f"{n} tokens · {_pct(r, n)} reasoning"
    if m.get("rest") and not m.get("nolabel"):
        info += " · truncated"
    return (f'<div class="msg role-assistant"><div class="role">assistant <small>message {m["m"]} · {info}'
            f'</small></div><div class="toks">{_turn_html(m, vocab)}</div></div>')


def _sstat(r: int, n: int) -> str:
    return f"{_pct(r, n)} reasoning · {n} tokens" if n else "no labeled tokens"


def _sample_html(s: dict, idx: int, vocab: dict) -> str:
    share = 100 * s["r"] / s["n"] if s["n"] else 0
    notes = "".join(f'<div class="note">{_esc(x)}</div>' for x in s["notes"])
    return (f'<section class="sample" id="s-{idx}" data-id="{_esc(s["id"])}"><div class="shead">'
            f'<span class="sidx">#{idx + 1}</span> <span class="sid">{_esc(s["id"])}</span>'
            f'<span class="sstat"><span class="bar{"" if s["n"] else " none"}"><span style="width:{share:.1f}%">'
            f'</span></span>{_sstat(s["r"], s["n"])}</span></div>{notes}'
            + "".join(_msg_html(m, vocab) for m in s["msgs"]) + "</section>")


_CSS = r"""
:root{--r:#a7e3b4;--r-d:#2f9e44;--b:#ffe8a3;--b-d:#e0a800;--u:#e6e8eb;--u-t:#868e96;--ink:#212529;
--mute:#6c757d;--line:#dee2e6;--bg:#f6f7f9;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--ink);background:var(--bg)}
header{background:var(--card);border-bottom:1px solid var(--line);padding:14px 22px 10px}
h1{font-size:18px;margin:0 0 2px;font-weight:650}
.sub{color:var(--mute);font-size:12.5px;overflow-wrap:anywhere}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0 6px}
.stat{border:1px solid var(--line);border-radius:8px;padding:6px 12px;min-width:120px;background:#fcfcfd}
.stat b{display:block;font-size:17px}.stat span{color:var(--mute);font-size:12px}
.legend{display:flex;gap:14px;align-items:center;font-size:12.5px;color:var(--mute);flex-wrap:wrap}
.chip{display:inline-block;font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;padding:0 5px;
border-radius:3px;color:var(--ink)}
.warn{background:#fff4e6;border:1px solid #ffc078;border-radius:8px;padding:8px 12px;margin:8px 0 0;font-size:13px}
.warn code{font-size:12px}
nav{position:sticky;top:0;z-index:5;background:rgba(246,247,249,.96);backdrop-filter:blur(4px);
border-bottom:1px solid var(--line);padding:8px 22px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
nav button,nav select,nav input{font:inherit;font-size:13px;padding:3px 9px;border:1px solid #ced4da;
border-radius:6px;background:#fff}
nav button:disabled{opacity:.45}
nav .where{color:var(--mute);font-size:13px;margin-right:auto}
main{padding:14px 22px 40px;max-width:1200px}
.sample{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:0 0 16px;
padding:10px 14px 12px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.sample.flash{outline:3px solid #74c0fc}
.shead{display:flex;align-items:center;gap:8px;border-bottom:1px solid #f1f3f5;padding-bottom:6px;margin-bottom:8px}
.sidx{color:var(--mute);font-size:12px}.sid{font-weight:650;font-family:ui-monospace,Menlo,Consolas,monospace}
.sstat{margin-left:auto;color:var(--mute);font-size:12.5px;display:flex;align-items:center;gap:7px}
.bar{display:inline-block;width:90px;height:7px;background:var(--b);border-radius:4px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--r-d)}.bar.none{background:var(--u)}
.note{font-size:12.5px;color:#a61e4d;margin:2px 0 6px}
.msg{margin:6px 0;border-left:3px solid var(--line);padding:2px 0 2px 10px}
.role{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--mute);font-weight:600}
.role small{text-transform:none;letter-spacing:0;font-weight:400;margin-left:6px}
.text{white-space:pre-wrap;word-break:break-word;max-height:14em;overflow:auto;color:#343a40}
.role-system{border-color:#ced4da}.role-user{border-color:#74c0fc}.role-tool{border-color:#b197fc}
.role-assistant{border-color:var(--r-d)}
.toks{white-space:pre-wrap;word-break:break-word;font:13px/1.75 ui-monospace,SFMono-Regular,Menlo,Consolas,
"DejaVu Sans Mono",monospace}
.tok{border-radius:2px;box-shadow:inset -1px 0 0 rgba(0,0,0,.13)}
.tok-r{background:var(--r)}.tok-b{background:var(--b)}.tok-u{background:var(--u);color:var(--u-t)}
.tok:hover{outline:1.5px solid #1c7ed6;position:relative;z-index:1}
.nl::before{content:"\21B5";color:rgba(0,0,0,.35);font-size:.85em}
.empty::before{content:"\2205";color:rgba(0,0,0,.35)}
"""

_JS = r"""
(function(){
var D=JSON.parse(document.getElementById('rft-data').textContent);
var V=D.vocab,S=D.samples,P=D.page_size,pages=Math.max(1,Math.ceil(S.length/P)),page=0;
var box=document.getElementById('samples'),sel=document.getElementById('page'),
    where=document.getElementById('where'),prev=document.getElementById('prev'),next=document.getElementById('next');
var E={'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'};
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return E[c];});}
function tt(s){return s===''?'<span class="empty"></span>':esc(s).replace(/\n/g,'<span class="nl"></span>\n');}
function fld(v){return (v>=0?'+':'-')+(Math.abs(v)/1000).toFixed(3);}
function pct(r,n){return n?(100*r/n).toFixed(1)+'%':'n/a';}
function turn(m){
  var ids=m.ids||[],lab=m.lab||'',ld=m.ld,h=[];
  for(var k=0;k<ids.length;k++){
    var r=lab.charCodeAt(k)===49,t=(ld&&ld[k]!==null)?'LD='+fld(ld[k])+' ':'';
    h.push('<span class="tok '+(r?'tok-r':'tok-b')+'" title="'+t+(r?'reasoning':'boilerplate')+' · token '+ids[k]+'">'+tt(V[ids[k]])+'</span>');
  }
  if(m.rest){h.push('<span class="tok tok-u" title="'+(m.nolabel?'not labeled: no masks turn for this message':'not labeled: past the turn\'s labeled tokens (truncated)')+'">'+tt(m.rest)+'</span>');}
  return h.join('');
}
function msg(m){
  var role=esc(m.role);
  if('text' in m){return '<div class="msg role-'+role+'"><div class="role">'+role+'</div><div class="text">'+(esc(m.text)||'<i>(empty)</i>')+'</div></div>';}
  var n=(m.ids||[]).length,r=(m.lab||'').split('1').length-1;
  var info=m.nolabel?'no labels':n+' tokens · '+pct(r,n)+' reasoning';
  if(m.rest&&!m.nolabel){info+=' · truncated';}
  return '<div class="msg role-assistant"><div class="role">assistant <small>message '+m.m+' · '+info+'</small></div><div class="toks">'+turn(m)+'</div></div>';
}
function sample(s,i){
  var share=s.n?100*s.r/s.n:0,notes='';
  for(var k=0;k<s.notes.length;k++){notes+='<div class="note">'+esc(s.notes[k])+'</div>';}
  var h='<section class="sample" id="s-'+i+'" data-id="'+esc(s.id)+'"><div class="shead"><span class="sidx">#'+(i+1)+'</span> <span class="sid">'+esc(s.id)+'</span><span class="sstat"><span class="bar'+(s.n?'':' none')+'"><span style="width:'+share.toFixed(1)+'%"></span></span>'+(s.n?pct(s.r,s.n)+' reasoning · '+s.n+' tokens':'no labeled tokens')+'</span></div>'+notes;
  for(var k=0;k<s.msgs.length;k++){h+=msg(s.msgs[k]);}
  return h+'</section>';
}
function show(p,focus){
  page=Math.max(0,Math.min(pages-1,p));
  var a=page*P,b=Math.min(S.length,a+P),h=[];
  for(var i=a;i<b;i++){h.push(sample(S[i],i));}
  box.innerHTML=h.join('');
  box.setAttribute('data-renderer','js');box.setAttribute('data-page',String(page+1));
  sel.value=String(page);prev.disabled=page===0;next.disabled=page===pages-1;
  where.textContent='page '+(page+1)+' of '+pages+' · samples '+(S.length?a+1:0)+'–'+b+' of '+S.length;
  if(history.replaceState){history.replaceState(null,'',focus!==undefined?'#id='+encodeURIComponent(S[focus].id):'#page='+(page+1));}
  if(focus!==undefined){var el=document.getElementById('s-'+focus);if(el){el.scrollIntoView();el.classList.add('flash');}}
  else{window.scrollTo(0,0);}
}
function find(q){
  q=q.trim();if(!q){return -1;}
  for(var i=0;i<S.length;i++){if(S[i].id===q){return i;}}
  var l=q.toLowerCase();
  for(var i=0;i<S.length;i++){if(S[i].id.toLowerCase().indexOf(l)>=0){return i;}}
  return -1;
}
function go(q){var i=find(q),m=document.getElementById('nomatch');
  m.textContent=i<0&&q.trim()?'no sample id matches':'';if(i>=0){show(Math.floor(i/P),i);}}
var o=[];
for(var p=0;p<pages;p++){o.push('<option value="'+p+'">'+(p+1)+' · '+esc(S[p*P]?S[p*P].id:'')+'</option>');}
sel.innerHTML=o.join('');
var dl=[];for(var i=0;i<S.length;i++){dl.push('<option value="'+esc(S[i].id)+'">');}
document.getElementById('ids').innerHTML=dl.join('');
prev.onclick=function(){show(page-1);};next.onclick=function(){show(page+1);};
sel.onchange=function(){show(+sel.value);};
document.getElementById('goform').onsubmit=function(e){e.preventDefault();go(document.getElementById('q').value);};
document.addEventListener('keydown',function(e){
  if(e.target.tagName==='INPUT'||e.target.tagName==='SELECT'||e.altKey||e.ctrlKey||e.metaKey){return;}
  if(e.key==='ArrowLeft'){show(page-1);}else if(e.key==='ArrowRight'){show(page+1);}});
var hs=decodeURIComponent(location.hash.slice(1)),mm;
if((mm=/^page=(\d+)$/.exec(hs))){show(+mm[1]-1);}
else if(hs.indexOf('id=')===0&&find(hs.slice(3))>=0){go(hs.slice(3));}
else{show(0);}
document.getElementById('nav').style.display='';
})();
"""


def _stat(value: str, label: str) -> str:
    return f'<div class="stat"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'


def _id_list(ids: list[str]) -> str:
    shown = ", ".join(f"<code>{_esc(i)}</code>" for i in ids[:MISMATCH_LIST])
    return shown + (f" … and {len(ids) - MISMATCH_LIST} more" if len(ids) > MISMATCH_LIST else "")


def build_page(masks_path: str, data_path: str, masks: dict, convs: list, tokenizer, tokenizer_source: str,
               max_samples: int | None = None, page_size: int = DEFAULT_PAGE_SIZE) -> tuple[str, dict]:
    """The HTML page and a summary dict (for the CLI's one-line report and tests)."""
    from rft_ds.data.render import tokenizer_fingerprint

    data_by_id = {c.id: c for c in convs}
    masks_only = [i for i in masks if i not in data_by_id]
    data_only = [c.id for c in convs if c.id not in masks]
    order = list(masks) + data_only
    if max_samples is not None:
        order = order[:max_samples]

    text = TokenText(tokenizer)
    vocab: dict[str, str] = {}
    samples = [sample_payload(sid, data_by_id.get(sid), masks.get(sid), text, vocab) for sid in order]

    # File-level summary over every masks record, whatever --max-samples shows.
    n_tok = sum(len(t["labels"]) for r in masks.values() for t in r["turns"])
    n_r = sum(sum(t["labels"]) for r in masks.values() for t in r["turns"])
    lds = {0: [], 1: []}
    for r in masks.values():
        for t in r["turns"]:
            for lab, x in zip(t["labels"], t.get("loss_diff") or ()):
                if isinstance(x, (int, float)) and math.isfinite(x):
                    lds[lab].append(x)
    n_trunc = sum(1 for s in samples for m in s["msgs"] if m.get("rest") and not m.get("nolabel"))

    meta = _meta(masks_path)
    fp = tokenizer_fingerprint(tokenizer)
    fps = sorted({r["tokenizer"] for r in masks.values()})
    warnings: list[tuple[str, list[str]]] = []  # (message, ids listed after it)
    if fps != [fp]:
        warnings.append((f"the masks were made with tokenizer fingerprint {', '.join(fps)} but {tokenizer_source} "
                         f"has {fp}: token texts may be wrong (pass the tokenizer `rft-ds label` used with "
                         "--tokenizer)", []))
    if masks_only:
        warnings.append((f"{len(masks_only)} sample(s) in the masks but not in --data (shown with their labeled "
                         "tokens only):", masks_only))
    if data_only:
        warnings.append((f"{len(data_only)} sample(s) in --data but not in the masks (shown unlabeled, after the "
                         "labeled ones):", data_only))

    def mean(xs):
        return f"{sum(xs) / len(xs):+.3f}" if xs else "n/a"

    shown = f"{len(samples)}" + (f" of {len(masks) + len(data_only)}" if len(samples) < len(masks) + len(data_only)
                                  else "")
    stats = "".join([
        _stat(shown, "samples shown"),
        _stat(f"{n_tok:,}", "labeled tokens"),
        _stat(_pct(n_r, n_tok), f"reasoning ({n_r:,} tokens)"),
        _stat(_pct(n_tok - n_r, n_tok), f"boilerplate ({n_tok - n_r:,} tokens)"),
        _stat(f"{mean(lds[1])} / {mean(lds[0])}", "mean LD reasoning / boilerplate"),
    ] + ([_stat(str(n_trunc), "truncated turns shown")] if n_trunc else []))
    margin = meta.get("margin")
    sub = [f"masks <code>{_esc(str(masks_path))}</code>", f"data <code>{_esc(str(data_path))}</code>",
           f"tokenizer <code>{_esc(tokenizer_source)}</code>"]
    if meta.get("shad"):
        sub.append(f"SHAD model <code>{_esc(str(meta['shad']))}</code>")
    if margin is not None:
        sub.append(f"margin {_esc(str(margin))}")
    warn_html = ('<div class="warn">' + "<br>".join(_esc(w) + (" " + _id_list(ids) if ids else "")
                                                   for w, ids in warnings) + "</div>") if warnings else ""
    margin_txt = f"LD &gt; {_esc(str(margin))}" if margin is not None else "LD above the margin"
    legend = (f'<div class="legend"><span><span class="chip tok-r">reasoning</span> {margin_txt}</span>'
              '<span><span class="chip tok-b">boilerplate</span> otherwise</span>'
              '<span><span class="chip tok-u">unlabeled</span> not covered by the masks (truncated)</span>'
              '<span>hover a token for its LD = loss(SHAD model) − loss(base model), nats</span></div>')

    data_json = json.dumps({"page_size": page_size, "vocab": vocab, "samples": samples},
                           ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data_json = data_json.replace("<", "\\u003c")  # never closes the <script> element
    first = "".join(_sample_html(s, i, vocab) for i, s in enumerate(samples[:page_size]))
    pages = max(1, -(-len(samples) // page_size))
    title = f"SHAD token labels · {Path(masks_path).name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_esc(title)}</h1>
<div class="sub">{" · ".join(sub)}</div>
<div class="stats">{stats}</div>
{legend}{warn_html}
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
<script>{_JS}</script>
</body></html>
"""
    plain = [w + (" " + ", ".join(ids[:MISMATCH_LIST]) + (" ..." if len(ids) > MISMATCH_LIST else "") if ids else "")
             for w, ids in warnings]
    summary = {"samples": len(samples), "pages": pages, "tokens": n_tok, "reasoning": n_r,
               "masks_only": masks_only, "data_only": data_only, "warnings": plain}
    return page, summary


def run_view(args) -> int:
    from rft_ds.data.formats import read_conversations
    from rft_ds.masks import read_masks

    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.page_size < 1:
        raise ConfigError(f"--page-size must be >= 1, got {args.page_size}")
    masks = read_masks(args.masks)
    convs = read_conversations(args.data)
    tok, source = load_tokenizer(args.masks, args.tokenizer)
    page, summary = build_page(args.masks, args.data, masks, convs, tok, source, args.max_samples, args.page_size)
    with atomic_write(args.output) as f:
        f.write(page)
    for w in summary["warnings"]:
        print(f"rft-ds view: warning: {w}", file=sys.stderr)
    share = _pct(summary["reasoning"], summary["tokens"])
    size = os.path.getsize(args.output)
    print(f"wrote {args.output} ({size / 1e6:.1f} MB): {summary['samples']} samples on {summary['pages']} page(s), "
          f"{summary['tokens']} labeled tokens, {share} reasoning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="render a masks file as a self-contained HTML page (tokens coloured by label)")
    p.add_argument("masks", metavar="MASKS.jsonl", help="masks file written by `rft-ds label`")
    p.add_argument("--data", required=True, help="the JSONL the masks were made from (OpenAI messages or ShareGPT)")
    p.add_argument("--output", required=True, help="HTML file to write")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer/model directory to decode token ids (default: 'base' in the masks sidecar)")
    p.add_argument("--max-samples", type=int, default=None, help="render only the first N samples")
    p.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="samples per page (default %(default)s)")
    p.set_defaults(func=run_view)
