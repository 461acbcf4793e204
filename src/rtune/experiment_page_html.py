"""The experiment page's template (jinja2, self-contained: CSS inline, figures as data URIs)."""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rtune experiment: {{ r.name }}</title>
<style>
:root { --fg:#1d232b; --mute:#5b6673; --line:#d9dee4; --bg:#f6f7f9; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0; }
header.top { padding: 14px 24px; background: #22303f; color: #fff; }
header.top h1 { margin: 0; font-size: 20px; }
header.top .sub { margin: 4px 0 0; color: #c6d0db; font-size: 12px; }
header.top a { color: #cfe3ff; }
nav { padding: 6px 24px; background: var(--bg); border-bottom: 1px solid var(--line); }
nav a { margin-right: 16px; color: #245ea8; text-decoration: none; }
section { padding: 8px 24px 16px; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 14.5px; margin: 14px 0 4px; }
table.t { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 12px; }
table.t th, table.t td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
table.t th { background: var(--bg); }
table.t .l { text-align: left; }
.notes { color: var(--mute); font-size: 12.5px; }
.warn { background: #fff4d6; border: 1px solid #e8cf7d; padding: 8px 12px; margin: 10px 24px;
        border-radius: 4px; }
img.fig { max-width: 100%; border: 1px solid var(--line); }
.pos { color: #1f7a35; } .neg { color: #b3261e; }
code { background: var(--bg); padding: 0 3px; }
</style></head>
<body>
<header class="top"><h1>rtune experiment: {{ r.name }}</h1>
<p class="sub">{% if r.description %}{{ r.description }} · {% endif %}generated {{ generated }}
by rtune {{ state.rtune_version }} · <a href="{{ links.json }}">experiment.json</a> (recipe as
resolved, versions, hashes, timings) · <a href="{{ links.records }}">records</a></p></header>
<nav><a href="#arms">Arms</a><a href="#data">Data</a><a href="#selection">Selection</a>
<a href="#training">Training</a><a href="#judging">Judging</a>{% if bench %}<a href="#bench">Benchmarks</a>{% endif %}
<a href="#steps">Steps</a></nav>
{% for n in notes %}<p class="warn">{{ n }}</p>{% endfor %}

<section id="arms"><h2>Arms</h2>
<p class="notes">Each arm trains <code>{{ r.base_model.label() }}</code> on its own data with the same
settings (unless the recipe overrides them for the arm).</p>
<table class="t"><tr><th class="l">arm</th><th class="l">data</th><th>records</th><th>used</th>
<th>truncated</th><th>dropped</th><th>tokens</th><th>steps</th><th>first loss</th><th>last loss</th>
<th>tokens/s</th><th>train time</th><th class="l">model</th></tr>
{% for a in arms %}<tr><td class="l">{{ a.name }}</td><td class="l"><a href="{{ a.data_link }}">{{ a.data }}</a></td>
<td>{{ a.train.records }}</td><td>{{ a.train.used }}</td><td>{{ a.train.truncated }}</td>
<td>{{ a.train.dropped }}</td><td>{{ a.train.tokens }}</td><td>{{ a.train.steps }}</td>
<td>{{ num(a.train.losses[0] if a.train.losses else None, 4) }}</td>
<td>{{ num(a.train.losses[-1] if a.train.losses else None, 4) }}</td>
<td>{{ a.train.tokens_per_s }}</td><td>{{ num(a.wall, 1) }} s</td>
<td class="l"><a href="{{ a.model }}">{{ a.model }}</a></td></tr>
{% endfor %}</table></section>

<section id="data"><h2>Data statistics</h2>
<p class="notes">Lengths in {{ stats.length_unit }} ({{ stats.tokenizer }}); coherence:
instruction-response cosine similarity{% if stats.coherence_model %} ({{ stats.coherence_model }}){% endif %};
IFD / r-IFD: means over the scored records (student <code>{{ r.student.label() }}</code>).
Per-record values: <a href="{{ links.records }}">records page</a>, <a href="{{ links.stats }}">stats.json</a>.</p>
<table class="t"><tr><th class="l">data</th><th>records</th><th>instruction mean</th><th>median</th>
<th>response mean</th><th>median</th><th>coherence</th><th>IFD</th><th>r-IFD</th></tr>
{% for g in groups %}<tr><td class="l">{% if g.dataset == "run" %}run: {{ g.group }}{% else %}arm {{ g.dataset }}{% endif %}</td>
<td>{{ g.count }}</td><td>{{ num(g.instruction_len, 1) }}</td><td>{{ num(g.instruction_len.median if g.instruction_len else None, 1) }}</td>
<td>{{ num(g.response_len, 1) }}</td><td>{{ num(g.response_len.median if g.response_len else None, 1) }}</td>
<td>{{ num(g.coherence) }}</td><td>{{ num(g.ifd_ppl) }}</td><td>{{ num(g.rifd_ppl) }}</td></tr>
{% endfor %}</table>
{% for n in stats.notes %}<p class="notes">{{ n }}</p>{% endfor %}</section>

<section id="selection"><h2>Selection</h2>
{% if selection %}<p>Policy <b>{{ selection.policy }}</b>: {{ selection.kept }} of {{ selection.sources }}
source records kept. Every decision and its reason: <a href="{{ links.records }}#decision=kept">records page</a>.</p>
<table class="t"><tr><th class="l">case</th><th>kept</th><th>dropped</th><th class="l">rule</th></tr>
{% for case, c in selection.cases.items() %}<tr><td class="l">{{ case }}</td><td>{{ c.kept }}</td>
<td>{{ c.dropped }}</td><td class="l">{{ cases.get(case, "") }}</td></tr>{% endfor %}</table>
<p class="notes">Training files written: {% for d, f in selection.files.items() %}{{ d }} ({{ f.records }} records){% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% else %}<p class="notes">Not run yet.</p>{% endif %}</section>

<section id="training"><h2>Training loss</h2>
{% if loss_png %}<img class="fig" alt="training loss per arm" src="data:image/png;base64,{{ loss_png }}">
<table class="t"><tr><th class="l">arm</th><th class="l">loss at each logged step</th><th class="l">batch</th></tr>
{% for a in arms %}<tr><td class="l">{{ a.name }}</td><td class="l">{% for l in a.train.losses or [] %}{{ "%.4f"|format(l) }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="l">{{ a.train.batch }}</td></tr>{% endfor %}</table>
{% else %}<p class="notes">No loss logged.</p>{% endif %}</section>

<section id="judging"><h2>Pairwise judging</h2>
<p class="notes">Judge <code>{{ r.judge_model.label() }}</code>; each question judged in both orders;
win-rate score (W&minus;L)/N+1 with a bootstrap 95% interval (1 = even).</p>
{% for j in judges %}<h3>{{ j.a }} (A) vs {{ j.b }} (B)</h3>
{% set s = j.summary %}{% if s.overall %}
<table class="t"><tr><th class="l">test set</th><th>questions</th><th>A wins</th><th>tie</th><th>B wins</th>
<th>failed</th><th>score</th><th>95% interval</th></tr>
{% for name, b in s.test_sets.items() %}<tr><td class="l">{{ name }}</td><td>{{ b.questions }}</td>
<td>{{ b.win }}</td><td>{{ b.tie }}</td><td>{{ b.loss }}</td><td>{{ b.failed }}</td><td>{{ num(b.score) }}</td>
<td>{% if b.ci95 %}[{{ num(b.ci95[0]) }}, {{ num(b.ci95[1]) }}]{% else %}–{% endif %}</td></tr>{% endfor %}
{% set b = s.overall %}<tr><td class="l"><b>overall</b></td><td>{{ b.questions }}</td><td>{{ b.win }}</td>
<td>{{ b.tie }}</td><td>{{ b.loss }}</td><td>{{ b.failed }}</td><td><b>{{ num(b.score) }}</b></td>
<td>{% if b.ci95 %}[{{ num(b.ci95[0]) }}, {{ num(b.ci95[1]) }}]{% else %}–{% endif %}</td></tr></table>
<p class="notes">Records: <a href="{{ j.results }}">results.json</a> · <a href="{{ j.questions }}">questions.jsonl</a>
(per question: both orders' scores, outcome) · answers <a href="{{ j.answers_a }}">{{ j.a }}</a>,
<a href="{{ j.answers_b }}">{{ j.b }}</a> · judge calls {{ s.calls.calls if s.calls else "–" }}{% if s.calls %}, ${{ "%.4f"|format(s.calls.cost) }}{% endif %}</p>
{% if j.chart %}<img class="fig" alt="W/T/L chart" src="data:image/png;base64,{{ j.chart }}">{% endif %}
{% else %}<p class="notes">Not judged yet.</p>{% endif %}
{% else %}<p class="notes">The recipe names no pairs to judge.</p>{% endfor %}</section>

{% if bench %}<section id="bench"><h2>Benchmarks</h2>
<table class="t"><tr><th class="l">task</th><th class="l">metric</th>{% for a in bench.arms %}<th>{{ a }}</th>{% endfor %}
{% for p in bench.pairs %}<th>&Delta; {{ p }}</th>{% endfor %}</tr>
{% for row in bench.rows %}<tr><td class="l">{{ row.task }}</td><td class="l">{{ row.metric }}{% if row.filter and row.filter != "none" %} ({{ row.filter }}){% endif %}</td>
{% for a in bench.arms %}<td>{{ num(row["values"].get(a), 4) }}</td>{% endfor %}
{% for p in bench.pairs %}{% set d = row.deltas.get(p) %}<td class="{{ 'pos' if d and d > 0 else ('neg' if d and d < 0 else '') }}">{% if d is none %}–{% else %}{{ "%+.4f"|format(d) }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="notes">Summaries: {% for a, f in bench.files.items() %}<a href="{{ f }}">{{ a }}</a>{% if not loop.last %}, {% endif %}{% endfor %}</p>
</section>{% endif %}

<section id="steps"><h2>Steps</h2>
<table class="t"><tr><th class="l">step</th><th class="l">status</th><th>wall time</th><th class="l">fingerprint</th>
<th class="l">finished</th><th class="l">outputs</th></tr>
{% for s in steps %}<tr><td class="l">{{ s.name }}</td><td class="l">{{ s.status }}</td><td>{{ num(s.wall_s, 1) }} s</td>
<td class="l"><code>{{ s.fingerprint }}</code></td><td class="l">{{ s.finished or "" }}</td>
<td class="l">{% for k, v in (s.outputs or {}).items() %}<a href="../{{ v }}">{{ v }}</a>{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>
<p class="notes">Rerun the same command to bring everything up to date: a step whose settings,
inputs and earlier steps are unchanged is skipped; <code>rtune run RECIPE --dry-run</code> shows
the plan and what paid calls it would make.</p></section>
</body></html>
"""
