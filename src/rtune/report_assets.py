"""The report page: one self-contained HTML file (jinja2 template; CSS and JS inline).

The record browser keeps all record text out of the DOM: a compact index (one small array per
record) drives filtering, and record text lives in JSON chunks (inline ``<script
type="application/json">`` blocks, or ``data/chunk-N.js`` files for very large runs) that are
parsed only when a page or a search needs them. Filter state lives in the URL hash
(``#kind=res&decision=dropped&reason=2&q=word&page=3``) so views can be linked and tested.
"""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
:root { --fg:#1d232b; --mute:#5b6673; --line:#d9dee4; --bg:#f6f7f9; --ins:#d5f5dc; --del:#fbdada; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header.top { padding: 14px 24px; background: #22303f; color: #fff; }
header.top h1 { margin: 0; font-size: 20px; }
header.top .sub { margin: 4px 0 0; color: #c6d0db; font-size: 12px; }
nav { padding: 6px 24px; background: var(--bg); border-bottom: 1px solid var(--line); }
nav a { margin-right: 16px; color: #245ea8; text-decoration: none; }
section { padding: 8px 24px 20px; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
table.stats { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 14px; }
table.stats th, table.stats td { border: 1px solid var(--line); padding: 3px 7px; text-align: right; }
table.stats th { background: var(--bg); }
table.stats td.l, table.stats th.l { text-align: left; }
.notes { color: var(--mute); font-size: 12.5px; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; }
.figs figure { margin: 0; border: 1px solid var(--line); padding: 6px; background: #fff; }
.figs img { max-width: 100%; height: auto; display: block; }
.figs figcaption { color: var(--mute); font-size: 12px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; padding: 8px 0; }
.controls select, .controls input[type=search] { font: inherit; padding: 3px 6px; }
.controls input[type=search] { min-width: 240px; }
.pager { display: flex; gap: 12px; align-items: center; margin: 6px 0; }
.pager button { font: inherit; padding: 2px 10px; }
#status { color: var(--mute); }
article.rec { border: 1px solid var(--line); border-radius: 6px; margin: 10px 0; }
article.rec > header { background: var(--bg); padding: 5px 10px; border-bottom: 1px solid var(--line);
                        font-size: 13px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11.5px;
         background: #e4e8ee; margin-left: 6px; }
.badge.kept { background: #c9efd2; } .badge.dropped { background: #f6cfd4; }
.badge.fallback, .badge.failed { background: #fde6bd; }
.cols { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(300px, 1fr);
        overflow-x: auto; }
.col { padding: 6px 10px; border-right: 1px solid var(--line); min-width: 0; }
.col:last-child { border-right: 0; }
.col.kept { background: #f3fbf5; }
.col h3 { margin: 2px 0 6px; font-size: 13.5px; }
.field { margin-bottom: 8px; }
.field > b { display: block; font-size: 11px; text-transform: uppercase; color: var(--mute); }
.txt { white-space: pre-wrap; word-wrap: break-word; max-height: 420px; overflow-y: auto; }
ins { background: var(--ins); text-decoration: none; }
del { background: var(--del); color: #7a1c1c; }
table.sc { font-size: 12px; border-collapse: collapse; margin: 4px 0; }
table.sc td { padding: 1px 8px 1px 0; }
details pre { white-space: pre-wrap; font-size: 12px; background: var(--bg); padding: 6px;
              max-height: 360px; overflow-y: auto; }
.prov { color: var(--mute); font-size: 11.5px; }
#js-errors { color: #b00020; white-space: pre-wrap; }
</style></head>
<body>
<header class="top"><h1>{{ title }}</h1>
<p class="sub">generated {{ generated }} by rtune · lengths in {{ stats.length_unit }}
({{ stats.tokenizer }})</p></header>
<nav><a href="#summary" data-nav>Summary</a><a href="#figures-sec" data-nav>Figures</a>
<a href="#records" data-nav>Records</a></nav>

<section id="summary"><h2>Summary</h2>
<table class="stats" id="stats-table">
<tr><th class="l">dataset</th><th class="l">group</th><th>records</th>
<th>instr. mean</th><th>instr. median</th><th>instr. p90</th>
<th>resp. mean</th><th>resp. median</th><th>resp. p90</th><th>coherence</th>
<th>IFD</th><th>r-IFD</th><th>ppl(y)</th><th>ppl(y|x)</th><th>ppl(x)</th><th>ppl(x|r(y))</th></tr>
{% for g in stats.groups %}<tr><td class="l">{{ g.dataset }}</td><td class="l">{{ g.group }}</td>
<td>{{ g.count }}</td>
<td>{{ num(g.instruction_len, "mean") }}</td><td>{{ num(g.instruction_len, "median") }}</td>
<td>{{ num(g.instruction_len, "p90") }}</td>
<td>{{ num(g.response_len, "mean") }}</td><td>{{ num(g.response_len, "median") }}</td>
<td>{{ num(g.response_len, "p90") }}</td><td>{{ num(g.coherence, "mean", 3) }}</td>
<td>{{ num(g.ifd_ppl, "mean", 3) }}</td><td>{{ num(g.rifd_ppl, "mean", 3) }}</td>
<td>{{ num(g.ppl_A_direct, "mean", 2) }}</td><td>{{ num(g.ppl_A_condition, "mean", 2) }}</td>
<td>{{ num(g.ppl_Q_direct, "mean", 2) }}</td><td>{{ num(g.ppl_Q_condition, "mean", 2) }}</td></tr>
{% endfor %}</table>
{% for name, run in stats.runs.items() %}
<h3>Run {{ name }}</h3>
<table class="stats"><tr><th class="l">sources</th><th>invalid inputs</th><th>oracle calls</th>
<th>tokens in</th><th>tokens out</th><th>cost</th><th>scored candidates</th></tr>
<tr><td class="l">{{ run.sources }}</td><td>{{ run.invalid_inputs }}</td><td>{{ run.oracle.calls }}</td>
<td>{{ run.oracle.tokens_in }}</td><td>{{ run.oracle.tokens_out }}</td>
<td>{{ "%.4f"|format(run.oracle.cost) }}</td><td>{{ run.scored }}</td></tr></table>
{% if run.parse %}<table class="stats"><tr><th class="l">kind</th><th>candidates</th>
<th>fallback rate</th><th>failure rate</th><th class="l">parse ok, guided / unguided</th><th class="l">reasons (count, rate)</th></tr>
{% for kind, p in run.parse.items() %}<tr><td class="l">{{ kind }}</td><td>{{ p.candidates }}</td>
<td>{{ "%.1f%%"|format(100 * p.fallback_rate) }}</td><td>{{ "%.1f%%"|format(100 * p.failure_rate) }}</td>
<td class="l">{% for form, g in (p.guided or {}).items() %}{{ "unguided" if form == "off" else "guided " ~ form }} {{ g.ok }}/{{ g.candidates }}{% if g.looped %} ({{ g.looped }} looped){% endif %}{% if not loop.last %}; {% endif %}{% endfor %}</td>
<td class="l">{% for r, c in p.reasons.items() %}{{ r }}: {{ c.count }} ({{ "%.1f%%"|format(100 * c.rate) }}){% if not loop.last %}; {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}
{% if run.call_failures %}<p>Failed oracle calls: {% for r, c in run.call_failures.items() %}{{ r }}: {{ c }}{% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% if run.selection %}<table class="stats"><tr><th class="l">decisions</th><th>dropped</th>
<th class="l">kept by kind</th><th class="l">cases</th><th class="l">policy</th></tr>
<tr><td class="l">{{ run.selection.decisions }}</td><td>{{ run.selection.dropped }}</td>
<td class="l">{% for k, c in run.selection.kept.items() %}{{ k }}: {{ c }}{% if not loop.last %}; {% endif %}{% endfor %}</td>
<td class="l">{% for k, c in run.selection.cases.items() %}{{ k }}: {{ c }}{% if not loop.last %}; {% endif %}{% endfor %}</td>
<td class="l">{% for k, c in run.selection.policies.items() %}{{ k }}{% if not loop.last %}; {% endif %}{% endfor %}</td></tr></table>
{% else %}<p class="notes">No selection decisions yet.</p>{% endif %}
{% endfor %}
{% if stats.notes %}<ul class="notes">{% for n in stats.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</section>

<section id="figures-sec"><h2>Figures</h2><div class="figs">
{% for f in figures %}<figure><img alt="{{ f.name }}" src="data:image/png;base64,{{ f.b64 }}">
<figcaption>{{ f.caption }} (figures/{{ f.name }}.png)</figcaption></figure>
{% else %}<p class="notes">No figure has data yet.</p>{% endfor %}</div></section>

<section id="records"><h2>Records</h2>
{% if browse_note %}<p class="notes">{{ browse_note }}</p>{% endif %}
<div class="controls">
<label>kind <select id="f-kind"></select></label>
<label>decision <select id="f-decision"></select></label>
<label><span id="f-reason-label">fallback</span> <select id="f-reason"></select></label>
<input id="f-q" type="search" placeholder="search all text (Enter)">
<label><input type="checkbox" id="f-diff" checked> word diff vs. original</label>
<label>per page <select id="f-per"><option>10</option><option>20</option><option>50</option>
<option>100</option></select></label>
</div>
<div id="browser" data-ready="0">
<div class="pager"><button id="prev" type="button">&lsaquo; prev</button>
<span id="status">loading…</span><button id="next" type="button">next &rsaquo;</button></div>
<div id="list"></div>
<div class="pager"><button id="prev2" type="button">&lsaquo; prev</button>
<button id="next2" type="button">next &rsaquo;</button></div>
</div>
<pre id="js-errors" hidden></pre>
</section>
<script type="application/json" id="rtune-index">{{ index_json|safe }}</script>
{% for c in chunks %}<script type="application/json" id="rtune-chunk-{{ loop.index0 }}">{{ c|safe }}</script>
{% endfor %}
<script>
"use strict";
(function () {
  const errBox = document.getElementById("js-errors");
  function showError(msg) { errBox.hidden = false; errBox.textContent += msg + "\n"; }
  window.addEventListener("error", (e) => showError("error: " + e.message));
  window.addEventListener("unhandledrejection", (e) => showError("error: " + e.reason));

  const IDX = JSON.parse(document.getElementById("rtune-index").textContent);
  const LABELS = {ifd_ppl: "IFD", rifd_ppl: "r-IFD", ifd_loss: "IFD (loss)",
    rifd_loss: "r-IFD (loss)", ppl_A_direct: "ppl(y)", ppl_A_condition: "ppl(y|x)",
    ppl_Q_direct: "ppl(x)", ppl_Q_condition: "ppl(x|r(y))", coherence: "coherence"};
  const $ = (id) => document.getElementById(id);
  const chunks = new Map();
  const waiting = new Map();

  window.rtuneChunk = function (n, rows) {
    chunks.set(n, rows);
    const w = waiting.get(n);
    if (w) { waiting.delete(n); w.resolve(); }
  };
  function loadChunk(n) {
    if (chunks.has(n)) return Promise.resolve();
    const el = document.getElementById("rtune-chunk-" + n);
    if (el) { chunks.set(n, JSON.parse(el.textContent)); return Promise.resolve(); }
    if (waiting.has(n)) return waiting.get(n).promise;
    const w = {};
    w.promise = new Promise((resolve, reject) => { w.resolve = resolve; w.reject = reject; });
    waiting.set(n, w);
    const s = document.createElement("script");
    s.src = "data/chunk-" + n + ".js";
    s.onerror = () => w.reject(new Error("cannot load data/chunk-" + n + ".js"));
    document.head.appendChild(s);
    return w.promise;
  }
  function loadFor(positions) {
    const need = new Set(positions.map((p) => Math.floor(p / IDX.chunk)));
    return Promise.all([...need].map(loadChunk));
  }
  const rowAt = (p) => chunks.get(Math.floor(p / IDX.chunk))[p % IDX.chunk];

  // meta rows: [source index, kinds bitmask, decision ("" none, "-" dropped, kind kept), [reason ids]]
  function filterMeta(s) {
    const kbit = s.kind ? (1 << IDX.kinds.indexOf(s.kind)) : 0;
    const out = [];
    const meta = IDX.meta;
    for (let p = 0; p < meta.length; p++) {
      const m = meta[p];
      if (kbit && !(m[1] & kbit)) continue;
      if (s.decision) {
        const d = m[2];
        if (s.decision === "kept" && (d === "" || d === "-")) continue;
        if (s.decision.startsWith("kept:") && !d.split(",").includes(s.decision.slice(5))) continue;
        if (s.decision === "dropped" && d !== "-") continue;
        if (s.decision === "undecided" && d !== "") continue;
      }
      if (s.reason) {
        if (s.reason === "any" && !m[3].length) continue;
        if (s.reason === "none" && m[3].length) continue;
        if (s.reason !== "any" && s.reason !== "none" && !m[3].includes(+s.reason)) continue;
      }
      out.push(p);
    }
    return out;
  }
  const hayCache = new Map();
  function hay(p) {
    let h = hayCache.get(p);
    if (h === undefined) {
      const r = rowAt(p);
      const parts = [String(r.i)];
      for (const v of r.v) parts.push(v.ins, v.inp || "", v.out, v.raw || "", v.fr || "");
      if (r.d) parts.push(r.d.reason || "", r.d.case || "");
      h = parts.join("\n").toLowerCase();
      hayCache.set(p, h);
    }
    return h;
  }

  function readState() {
    const q = new URLSearchParams(location.hash.slice(1));
    return {kind: q.get("kind") || "", decision: q.get("decision") || "",
      reason: q.get("reason") || "", q: q.get("q") || "",
      page: Math.max(1, parseInt(q.get("page") || "1", 10) || 1),
      per: Math.max(1, parseInt(q.get("per") || "20", 10) || 20),
      diff: q.get("diff") !== "0"};
  }
  function writeState(s) {
    const q = new URLSearchParams();
    for (const k of ["kind", "decision", "reason", "q"]) if (s[k]) q.set(k, s[k]);
    if (s.page > 1) q.set("page", String(s.page));
    if (s.per !== 20) q.set("per", String(s.per));
    if (!s.diff) q.set("diff", "0");
    const h = q.toString();
    if (h !== location.hash.slice(1)) history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
  }

  function tokens(s) { return s.match(/\s+|[^\s]+/g) || []; }
  function diff(a, b) {  // word-level LCS diff: [[op, text]], op 0 same, -1 removed, 1 added
    const A0 = tokens(a), B0 = tokens(b);
    let pre = 0;
    while (pre < A0.length && pre < B0.length && A0[pre] === B0[pre]) pre++;
    let suf = 0;
    while (suf < A0.length - pre && suf < B0.length - pre &&
           A0[A0.length - 1 - suf] === B0[B0.length - 1 - suf]) suf++;
    const A = A0.slice(pre, A0.length - suf), B = B0.slice(pre, B0.length - suf);
    const out = [];
    const push = (op, t) => {
      if (!t) return;
      const last = out[out.length - 1];
      if (last && last[0] === op) last[1] += t; else out.push([op, t]);
    };
    push(0, A0.slice(0, pre).join(""));
    const n = A.length, m = B.length;
    if (n * m > 4e6) { push(-1, A.join("")); push(1, B.join("")); }
    else {
      const w = m + 1, dp = new Uint16Array((n + 1) * w);
      for (let i = n - 1; i >= 0; i--)
        for (let j = m - 1; j >= 0; j--)
          dp[i * w + j] = A[i] === B[j] ? dp[(i + 1) * w + j + 1] + 1
            : Math.max(dp[(i + 1) * w + j], dp[i * w + j + 1]);
      let i = 0, j = 0;
      while (i < n && j < m) {
        if (A[i] === B[j]) { push(0, A[i]); i++; j++; }
        else if (dp[(i + 1) * w + j] >= dp[i * w + j + 1]) push(-1, A[i++]);
        else push(1, B[j++]);
      }
      while (i < n) push(-1, A[i++]);
      while (j < m) push(1, B[j++]);
    }
    push(0, A0.slice(A0.length - suf).join(""));
    return out;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function textBox(base, text, useDiff) {
    const box = el("div", "txt");
    if (!useDiff || base === null || base === text) { box.textContent = text; return box; }
    for (const [op, t] of diff(base, text))
      box.appendChild(op === 0 ? document.createTextNode(t) : el(op > 0 ? "ins" : "del", "", t));
    return box;
  }
  function field(label, box) {
    const f = el("div", "field");
    f.appendChild(el("b", "", label));
    f.appendChild(box);
    return f;
  }
  function fmt(x) { return typeof x === "number" ? (Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(4)) : String(x); }

  function renderRow(r, s) {
    const art = el("article", "rec");
    art.dataset.idx = r.i;
    const head = el("header", "", IDX.mode === "run" ? "source #" + r.i : "record " + r.i);
    if (r.d) {
      const kept = r.d.kept;
      head.appendChild(el("span", "badge " + (kept ? "kept" : "dropped"),
        kept ? "kept: " + kept : "dropped"));
      if (r.d.case) head.appendChild(el("span", "badge", "case: " + r.d.case));
      if (r.d.policy) head.appendChild(el("span", "badge", "policy: " + r.d.policy));
      if (r.d.reason) head.appendChild(el("span", "prov", "  " + r.d.reason));
    } else if (IDX.mode === "run") head.appendChild(el("span", "badge", "no decision"));
    art.appendChild(head);
    const cols = el("div", "cols");
    const base = r.v[0];
    for (const v of r.v) {
      if (s.kind && v !== base && v.k !== s.kind) continue;
      const col = el("div", "col");
      if (r.d && r.d.kept && r.d.kept.split(",").includes(v.k)) col.classList.add("kept");
      col.dataset.kind = v.k;
      const h = el("h3", "", v.k);
      if (v.st && v.st !== "ok") h.appendChild(el("span", "badge " + v.st, v.st));
      if (v.fr) h.appendChild(el("span", "badge fallback", v.fr));
      col.appendChild(h);
      const d = s.diff && v !== base;
      col.appendChild(field("instruction", textBox(d ? base.ins : null, v.ins, d)));
      if (v.inp || base.inp) col.appendChild(field("input", textBox(d ? (base.inp || "") : null, v.inp || "", d)));
      col.appendChild(field("response", textBox(d ? base.out : null, v.out, d)));
      if (v.sc && Object.keys(v.sc).length) {
        const t = el("table", "sc");
        for (const k of Object.keys(LABELS)) {
          if (v.sc[k] === undefined || v.sc[k] === null) continue;
          const tr = el("tr");
          tr.appendChild(el("td", "", LABELS[k]));
          tr.appendChild(el("td", "", fmt(v.sc[k])));
          t.appendChild(tr);
        }
        col.appendChild(t);
      }
      if (v.om || v.pid) col.appendChild(el("div", "prov",
        [v.om && "oracle: " + v.om, v.pid && "prompt: " + v.pid].filter(Boolean).join(" · ")));
      if (v.raw) {
        const det = el("details");
        det.appendChild(el("summary", "", "oracle reply (critique)"));
        det.appendChild(el("pre", "", v.raw));
        col.appendChild(det);
      }
      cols.appendChild(col);
    }
    art.appendChild(cols);
    return art;
  }

  let state = readState();
  let gen = 0;
  async function render() {
    const my = ++gen;
    const s = state;
    const t0 = performance.now();
    const browser = $("browser");
    browser.dataset.ready = "0";
    let ids = filterMeta(s);
    if (s.q) {
      const need = [...new Set(ids.map((p) => Math.floor(p / IDX.chunk)))];
      for (let k = 0; k < need.length; k++) {
        if (k % 8 === 0) {  // let the page repaint and newer requests take over
          $("status").textContent = `searching… ${k}/${need.length} data chunks`;
          await new Promise((r) => setTimeout(r, 0));
          if (my !== gen) return;
        }
        await loadChunk(need[k]);
      }
      if (my !== gen) return;
      const q = s.q.toLowerCase();
      ids = ids.filter((p) => hay(p).includes(q));
    }
    const pages = Math.max(1, Math.ceil(ids.length / s.per));
    if (s.page > pages) s.page = pages;
    const slice = ids.slice((s.page - 1) * s.per, s.page * s.per);
    await loadFor(slice);
    if (my !== gen) return;
    $("list").replaceChildren(...slice.map((p) => renderRow(rowAt(p), s)));
    const first = ids.length ? (s.page - 1) * s.per + 1 : 0;
    $("status").textContent = `${first}–${first + slice.length - (ids.length ? 1 : 0)} of ${ids.length} matching (${IDX.meta.length} in all) · page ${s.page}/${pages}`;
    for (const b of ["prev", "prev2"]) $(b).disabled = s.page <= 1;
    for (const b of ["next", "next2"]) $(b).disabled = s.page >= pages;
    Object.assign(browser.dataset, {matching: ids.length, page: s.page, pages: pages, ready: "1",
      ms: (performance.now() - t0).toFixed(1)});
    writeState(s);
  }
  function update(change) {
    state = Object.assign({}, state, change);
    syncControls();
    window.rtuneRendered = render();
    return window.rtuneRendered;
  }

  function option(sel, value, label) { const o = el("option", "", label); o.value = value; sel.appendChild(o); }
  function setupControls() {
    const kind = $("f-kind"), dec = $("f-decision"), rea = $("f-reason");
    option(kind, "", "all");
    for (const k of IDX.kinds) option(kind, k, k);
    option(dec, "", "all");
    if (IDX.mode === "run") {
      option(dec, "kept", "kept (any kind)");
      for (const k of IDX.kinds) option(dec, "kept:" + k, "kept " + k);
      option(dec, "dropped", "dropped");
      option(dec, "undecided", "no decision");
    } else dec.disabled = true;
    const run = IDX.mode === "run";
    if (!run) $("f-reason-label").textContent = "difference";
    option(rea, "", "all");
    option(rea, "any", run ? "any fallback/failure" : "any difference");
    option(rea, "none", run ? "none" : "identical");
    IDX.reasons.forEach((r, i) => option(rea, String(i), `${r} (${IDX.reason_counts[i]})`));
    kind.addEventListener("change", () => update({kind: kind.value, page: 1}));
    dec.addEventListener("change", () => update({decision: dec.value, page: 1}));
    rea.addEventListener("change", () => update({reason: rea.value, page: 1}));
    const q = $("f-q");
    q.addEventListener("keydown", (e) => { if (e.key === "Enter") update({q: q.value.trim(), page: 1}); });
    q.addEventListener("search", () => update({q: q.value.trim(), page: 1}));
    $("f-diff").addEventListener("change", () => update({diff: $("f-diff").checked}));
    $("f-per").addEventListener("change", () => update({per: +$("f-per").value, page: 1}));
    for (const b of ["prev", "prev2"]) $(b).addEventListener("click", () => update({page: state.page - 1}));
    for (const b of ["next", "next2"]) $(b).addEventListener("click", () => update({page: state.page + 1}));
    window.addEventListener("hashchange", () => { state = readState(); syncControls(); window.rtuneRendered = render(); });
    for (const a of document.querySelectorAll("a[data-nav]"))
      a.addEventListener("click", (e) => { e.preventDefault(); $(a.getAttribute("href").slice(1)).scrollIntoView(); });
  }
  function syncControls() {
    $("f-kind").value = state.kind;
    $("f-decision").value = state.decision;
    $("f-reason").value = state.reason;
    $("f-q").value = state.q;
    $("f-diff").checked = state.diff;
    const per = $("f-per");
    if (![...per.options].some((o) => +o.value === state.per)) option(per, String(state.per), String(state.per));
    per.value = String(state.per);
  }
  window.rtune = {update: update, state: () => Object.assign({}, state), index: IDX};
  setupControls();
  syncControls();
  window.rtuneRendered = render();
})();
</script>
</body></html>
"""
