"""The run report: every figure a run supports as PNG, and one self-contained HTML page.

``write_report([RUN_DIR, ...], out=None)`` loads each run directory (one or several
methods), renders the figures of :data:`RUN_FIGURE_MODULES` for every method and the
comparison figures when there are several, writes them as PNG into ``out`` (default
``RUN_DIR/report/``, the first run's) and writes ``report.html`` there: the metrics table,
the figures (inlined as base64 PNG/GIF: the file opens offline, needs no JavaScript, and can
be mailed as it is), what could not be drawn and why, and each run's config. A figure whose
data the run lacks is listed as skipped; a run interrupted half-way gives the figures of
what it has.
"""

from __future__ import annotations

import base64
import html
import importlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .runs import Run, load_runs
from .style import NoData, save_png

__all__ = ["write_report", "Report", "RUN_FIGURE_MODULES"]

#: processes that render figures (``NEUROPLASTIC_PLOT_JOBS``; default: up to 2 cores)
PLOT_JOBS = int(os.environ.get("NEUROPLASTIC_PLOT_JOBS", min(2, os.cpu_count() or 1)))

#: modules whose ``RUN_FIGURES`` (name -> fn(Run) -> Figure) go into a report, in this order
RUN_FIGURE_MODULES = ("continual", "spikes", "projection", "sparsity")


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    figures: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (figure, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (figure, error): a bug, reported
    seconds: float = 0.0


def _registry(kind: str) -> list[tuple[str, Callable]]:
    out = []
    for mod in RUN_FIGURE_MODULES:
        try:
            m = importlib.import_module(f"neuroplastic.plot.{mod}")
        except ImportError:
            continue
        out += list(getattr(m, kind, {}).items())
    return out


def _label_runs(groups: list[list[Run]], dirs: Sequence[Path]) -> list[Run]:
    runs = []
    for d, group in zip(dirs, groups):
        for r in group:
            if len(dirs) > 1:
                r.tag = d.name
            runs.append(r)
    return runs


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _render(name: str, make: Callable, path: Path) -> tuple[str, str]:
    """``("ok", base64 PNG)``, ``("skipped", reason)`` or ``("failed", error)`` for one figure."""
    try:
        fig = make()
    except NoData as exc:
        return "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - one figure must not sink the report
        return "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    save_png(fig, path, dpi=100)
    return "ok", base64.b64encode(path.read_bytes()).decode()


#: the figures of the report being written (read by forked workers: nothing is pickled)
_JOBS: list[tuple[str, Callable, Path]] = []


def _job(i: int) -> tuple[str, str]:
    name, make, path = _JOBS[i]
    return _render(name, make, path)


def _render_all(jobs: list[tuple[str, Callable, Path]]) -> list[tuple[str, str]]:
    """Render every job, on :data:`PLOT_JOBS` forked processes where the OS can fork (matplotlib's
    drawing holds the GIL: threads would not help), else one after the other."""
    global _JOBS
    workers = min(PLOT_JOBS, len(jobs))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [_render(*j) for j in jobs]
    _JOBS = jobs
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_job, range(len(jobs)), chunksize=1)
    finally:
        _JOBS = []


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _metrics_table(runs: list[Run]) -> str:
    head = ("run", "tasks done", "ACC", "BWT", "FWT", "sparsity", "dormant (overall)", "time s")
    rows = []
    for r in runs:
        m = r.metrics
        R = r.acc_matrix
        done = m.get("tasks_done", R.shape[0] if R is not None else 0)
        planned = len(r.tasks) or done
        dormant = (m.get("dormant_ratio") or {}).get("overall")
        cells = (r.label, f"{done} / {planned}", m.get("acc"), m.get("bwt"), m.get("fwt"), m.get("sparsity"),
                 dormant, m.get("wall_s"))
        rows.append("<tr>" + "".join(f"<td>{_fmt(c, 3 if i in (5, 6) else 2)}</td>" for i, c in enumerate(cells))
                    + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0;font-size:.95em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.note{color:#8a5a00}
"""


def _html(title: str, runs: list[Run], sections: list[tuple[str, list[tuple[str, str, str]]]],
          report: Report) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} run(s); generated {time.strftime('%Y-%m-%d %H:%M')} by neuroplastic plot.</p>",
             "<h2>Metrics</h2>", _metrics_table(runs)]
    problems = [(r.label, p) for r in runs for p in r.problems]
    if problems:
        parts.append("<p class='note'>" + "<br>".join(f"{html.escape(a)}: {html.escape(b)}" for a, b in problems)
                     + "</p>")
    for heading, figs in sections:
        if not figs:
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for name, mime, data in figs:
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:{mime};base64,{data}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    if report.skipped or report.failed:
        parts.append("<h2>Not drawn</h2><ul>")
        parts += [f"<li>{html.escape(n)}: {html.escape(w)}</li>" for n, w in report.skipped]
        parts += [f"<li class='note'>{html.escape(n)}: failed ({html.escape(w)})</li>" for n, w in report.failed]
        parts.append("</ul>")
    for r in runs:
        if r.config:
            parts.append(f"<h3>Config of {html.escape(r.label)}</h3><pre>{html.escape(r.config)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *,
                 animation: bool = True) -> Report:
    """Figures and ``report.html`` for ``run_dirs`` (see the module doc)."""
    from ..io import write_text

    t0 = time.perf_counter()
    if not run_dirs:
        raise UserError("give at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    runs = _label_runs([load_runs(d) for d in dirs], dirs)
    out = Path(out) if out is not None else dirs[0] / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give a directory")
    report = Report(html=out / "report.html")
    # (section, caption, job index) in reading order; the jobs render in parallel
    jobs: list[tuple[str, Callable, Path]] = []
    layout: list[tuple[str, str, int]] = []
    if len(runs) > 1:
        for name, fn in _registry("COMPARE_FIGURES"):
            layout.append(("Side by side", name.replace("_", " "), len(jobs)))
            jobs.append((name, lambda fn=fn: fn(runs), out / f"{name}.png"))
    for r in runs:
        sub = out / _slug(r.label) if len(runs) > 1 else out
        for name, fn in _registry("RUN_FIGURES"):
            label = f"{r.label}: {name.replace('_', ' ')}" if len(runs) > 1 else name.replace("_", " ")
            layout.append((r.label, label, len(jobs)))
            jobs.append((label, lambda fn=fn, r=r: fn(r), sub / f"{name}.png"))
    out.mkdir(parents=True, exist_ok=True)
    for _, _, path in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
    results = _render_all(jobs)
    sections: dict[str, list[tuple[str, str, str]]] = {}
    for section, caption, i in layout:
        status, data = results[i]
        figs = sections.setdefault(section, [])
        if status == "ok":
            report.figures.append(jobs[i][2])
            figs.append((caption, "image/png", data))
        else:
            (report.skipped if status == "skipped" else report.failed).append((jobs[i][0], data))
    if animation:
        for r in runs:
            sub = out / _slug(r.label) if len(runs) > 1 else out
            gif = _animation(r, sub / "spikes.gif", report)
            if gif:
                caption = "spikes of one test sample over time"
                sections.setdefault(r.label, []).append(
                    (f"{r.label}: {caption}" if len(runs) > 1 else caption, "image/gif", gif))
    title = "neuroplastic report: " + ", ".join(str(d) for d in dirs)
    write_text(report.html, _html(title, runs, list(sections.items()), report))
    report.seconds = time.perf_counter() - t0
    summary = {"figures": [str(p) for p in report.figures], "skipped": report.skipped, "failed": report.failed}
    write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    return report


def _animation(run: Run, path: Path, report: Report) -> str | None:
    try:
        from .animation import animate_run
    except ImportError:
        return None
    try:
        written = animate_run(run, path)
    except NoData as exc:
        report.skipped.append((f"{run.label}: animation", str(exc)))
        return None
    except Exception as exc:  # noqa: BLE001
        report.failed.append((f"{run.label}: animation", f"{type(exc).__name__}: {exc}"))
        return None
    report.figures.append(Path(written))
    return base64.b64encode(Path(written).read_bytes()).decode()
