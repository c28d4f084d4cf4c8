"""The status page of METRICSPORT (wodmail.metrics): the dashboard the replaced platform
showed (active workshops, active workshops by type, registrations over time, customers),
the queue, and what needs an operator. One HTML page rendered here, charts as inline SVG:
it loads nothing, runs no script, and works on a host with no network.

It shows the queue's figures (wodmail.queue.status) and, for each failure, what an operator
needs to act on it: ids, verbs, students, workshops, times, errors. Never a command's mail,
sender, address or a callback's body (the passwords are not stored anyway), nor a setting.
Every figure carries an `id` (tests and scripts read them from the page).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from jinja2 import Environment
from markupsafe import Markup, escape

from wodmail.location import Location
from wodmail.queue.status import DAY, QueueStatus

#: Days of registrations the page draws.
HISTORY_DAYS = 30
_BAR = "#01a982"
_MUTED = "#7d8a99"
_ALERT = "#c54e4b"
_STATE_COLOURS = {"done": _BAR, "failed": _ALERT, "held": _ALERT, "running": "#5f7fe0"}


def when(moment: float | None) -> str:
    return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))


def bar_chart(
    title: str,
    rows: Sequence[tuple[str, int]],
    *,
    colour: str = _BAR,
    colours: Mapping[str, str] | None = None,
    ids: str | None = None,
    width: int = 460,
) -> Markup:
    """Horizontal bars, one per (label, value), with the value written after each bar;
    `colours`: a colour for some labels (the others get `colour`); `ids`: each value's text
    gets the id `{ids}-{label}`."""
    label_width, row_height = 170, 22
    height = max(1, len(rows)) * row_height + 8
    top = max((value for _label, value in rows), default=0) or 1
    fills = colours or {}

    def id_of(label: str) -> str:
        return f' id="{escape(ids)}-{escape(label)}"' if ids else ""

    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    if not rows:
        parts.append(f'<text x="4" y="18" fill="{_MUTED}">none</text>')
    for index, (label, value) in enumerate(rows):
        y = 4 + index * row_height
        length = round((width - label_width - 50) * value / top)
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{escape(label[:28])}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{max(length, 1)}" height="{row_height - 6}"'
            f' fill="{fills.get(label, colour)}"/><text x="{label_width + length + 6}" y="{y + 15}"{id_of(label)}>'
            f"{value}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def day_chart(title: str, by_day: Sequence[tuple[int, int]], today: int, *, width: int = 760) -> Markup:
    """Vertical bars, one per UTC day of the last HISTORY_DAYS, a date under every seventh."""
    counts = dict(by_day)
    days = list(range(today - HISTORY_DAYS + 1, today + 1))
    height, bottom, left, right = 190, 160, 36, 24
    slot = (width - left - right) / len(days)
    top = max(counts.values(), default=0) or 1
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<line x1="{left}" y1="{bottom}" x2="{width}" y2="{bottom}" stroke="{_MUTED}"/>'
        f'<text x="{left - 4}" y="14" text-anchor="end">{top}</text>'
        f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>'
    ]
    for index, day in enumerate(days):
        value = counts.get(day, 0)
        bar = round((bottom - 10) * value / top)
        x = left + index * slot
        if value:
            parts.append(
                f'<rect x="{x + 2:.1f}" y="{bottom - bar}" width="{slot - 4:.1f}" height="{bar}" fill="{_BAR}">'
                f"<title>{time.strftime('%Y-%m-%d', time.gmtime(day * DAY))}: {value}</title></rect>"
            )
        if (today - day) % 7 == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{bottom + 18}" text-anchor="middle">'
                f"{time.strftime('%m-%d', time.gmtime(day * DAY))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wodmail: {{ location }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #263040; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.sub { color: #7d8a99; margin-bottom: 16px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { border: 1px solid #d5dbe3; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.tile b { display: block; font-size: 28px; color: #01a982; }
.tile.alert b { color: #c54e4b; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
svg.chart { font-size: 12px; fill: #263040; }
table { border-collapse: collapse; margin-top: 4px; }
th, td { border-bottom: 1px solid #e4e8ee; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td.num { text-align: right; }
.error { color: #c54e4b; max-width: 640px; word-break: break-word; }
</style></head><body>
<h1>wodmail: {{ location }}</h1>
<div class="sub">as of {{ read_at }} UTC; {{ keep_days }} days of done jobs kept</div>
<div class="tiles">
<div class="tile"><b id="active-workshops">{{ s.active_students }}</b>active workshops</div>
<div class="tile"><b id="registrations">{{ s.registrations }}</b>registrations since {{ first }}</div>
<div class="tile"><b id="customers">{{ s.customers }}</b>customers</div>
<div class="tile"><b id="waiting">{{ s.jobs.queued + s.jobs.running }}</b>jobs waiting or running</div>
<div class="tile"><b id="callbacks-waiting">{{ s.callbacks.get("pending", 0) }}</b>callbacks waiting</div>
<div class="tile{% if s.needing_operator %} alert{% endif %}"><b id="needing-operator">{{ s.needing_operator }}</b>
need an operator</div>
</div>
<div class="charts">
<div><h2>Active workshops by type</h2>{{ active_chart }}</div>
<div><h2>Registrations by workshop</h2>{{ workshop_chart }}</div>
</div>
<h2>Registrations per day (UTC, last {{ history_days }} days)</h2>{{ day_chart }}
<div class="charts">
<div><h2>Jobs</h2>{{ queue_chart }}
<p>oldest waiting job: <span id="oldest-waiting">{{ oldest }}</span></p></div>
<div><h2>Callbacks and relayed mails</h2>
<table><tr><th>callbacks</th><th>count</th></tr>
{% for state, count in s.callbacks.items()|sort %}<tr><td>{{ state }}</td>
<td class="num" id="callbacks-{{ state }}">{{ count }}</td></tr>{% endfor %}
<tr><th>relayed mails</th><th></th></tr>
{% for state, count in s.relay.items()|sort %}<tr><td>{{ state }}</td>
<td class="num" id="relay-{{ state }}">{{ count }}</td></tr>{% endfor %}
<tr><th>refused mails kept</th><th></th></tr>
{% for door, count in s.refused.items()|sort %}<tr><td>{{ door }}</td>
<td class="num" id="refused-{{ door }}">{{ count }}</td></tr>{% endfor %}
</table></div>
</div>
<h2>Needing an operator</h2>
{% if not s.failed_jobs and not s.failed_callbacks and not s.failed_relay %}<p id="no-failures">Nothing.</p>{% endif %}
{% if s.failed_jobs %}<table id="failed-jobs"><tr><th>job</th><th>state</th><th>verb</th><th>student</th>
<th>workshop</th><th>customer</th><th>received</th><th>ended</th><th>error</th></tr>
{% for job in s.failed_jobs %}<tr><td class="num">{{ job.id }}</td><td>{{ job.state }}</td>
<td>{{ job.command.verb }}</td>
<td>{{ job.command.student_name }}{% if job.command.is_range %}..{{ job.command.last_stdid }}{% endif %}</td>
<td>{{ job.command.workshop or "-" }}</td><td>{{ job.command.customer }}</td><td>{{ when(job.received) }}</td>
<td>{{ when(job.finished) }}</td><td class="error">{{ job.error or "" }}</td></tr>
{% endfor %}</table><p>See a job with <code>wodmail jobs show ID</code>, run it again with
<code>wodmail retry ID</code>.</p>{% endif %}
{% if s.failed_callbacks %}<table id="failed-callbacks"><tr><th>callback</th><th>job</th><th>call</th><th>tries</th>
<th>error</th></tr>
{% for entry in s.failed_callbacks %}<tr><td class="num">{{ entry.id }}</td><td class="num">{{ entry.job_id }}</td>
<td>{{ entry.method }} {{ entry.path }}</td><td class="num">{{ entry.attempts }}</td>
<td class="error">{{ entry.last_error or "" }}</td></tr>
{% endfor %}</table><p>Send them again with <code>wodmail retry JOB</code>.</p>{% endif %}
{% if s.failed_relay %}<table id="failed-relay"><tr><th>mail</th><th>received</th><th>recipients</th><th>tries</th>
<th>error</th></tr>
{% for mail in s.failed_relay %}<tr><td class="num">{{ mail.id }}</td><td>{{ when(mail.received) }}</td>
<td class="num">{{ mail.recipients|length }}</td><td class="num">{{ mail.attempts }}</td>
<td class="error">{{ mail.last_error or "" }}</td></tr>
{% endfor %}</table><p>Send them again with <code>wodmail relay retry ID</code>.</p>{% endif %}
</body></html>
"""

_TEMPLATE = Environment(autoescape=True).from_string(_PAGE)


def render_status_page(location: Location, status: QueueStatus) -> str:
    """The page, for `status` read with its history (`read_status(..., history=True)`)."""
    active = sorted(status.active.items(), key=lambda item: (-item[1], item[0]))
    by_workshop = sorted(status.registrations_by_workshop.items(), key=lambda item: (-item[1], item[0]))
    queue = [(state, count) for state, count in status.jobs.items()]
    return _TEMPLATE.render(
        s=status,
        location=location.name,
        read_at=when(status.read_at),
        keep_days=location.job_keep_days,
        first=when(status.first_registration)[:10],
        oldest=when(status.oldest_waiting),
        history_days=HISTORY_DAYS,
        when=when,
        active_chart=bar_chart("Active workshops by type", active, ids="active"),
        workshop_chart=bar_chart("Registrations by workshop", by_workshop, colour="#5f7fe0"),
        day_chart=day_chart("Registrations per day", status.registrations_by_day, int(status.read_at // DAY)),
        queue_chart=bar_chart("Jobs by state", queue, colour=_MUTED, colours=_STATE_COLOURS, ids="jobs", width=420),
    )
