"""``report.html``: one self-contained page per run (or several runs side by side).

The page embeds its figures as base64 PNGs and uses no scripts or external
files, so it can be mailed or opened from anywhere. It holds the layer-wise
plots, the transfer heatmap and penalty-vs-distance plot, a table of every
metric at every block, and the run's settings and provenance from run.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Iterable

from matplotlib.figure import Figure

from . import __version__
from .analysis import ResultsLike, as_results, defined_transfer, has_transfer, reported_unit
from .artifacts import LAYERWISE_FIGURE, TRANSFER_FIGURE, RunFolderError, RunResults, layer_keys, require_complete
from .files import write_text_atomic
from .plotting import METRIC_LABELS, lens_label, layerwise, penalty_vs_distance, transfer_heatmap

REPORT_NAME = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; }
.runs { display: grid; gap: 1.5rem; }
.run { min-width: 0; }
figure { margin: 0.8rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.scroll { overflow-x: auto; max-width: 100%; }  /* wide tables scroll inside their box, not the page */
.scroll table.metrics { white-space: nowrap; }
table.provenance td { overflow-wrap: anywhere; }  /* long hashes and paths wrap */
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4rem 0.7rem; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.45rem; text-align: right; }
th { background: #f4f4f4; } th[colspan] { text-align: center; } td.name, th.name { text-align: left; }
td.undefined { color: #999; }
pre { background: #f7f7f7; padding: 0.6rem; font-size: 0.75rem; overflow-x: auto; }
"""
TABLE_METRICS = ("acc", "top5", "agree", "ce", "kl", "entropy")
FIGURE_METRICS = ("acc", "ce", "kl", "agree")


def png_data_uri(fig: Figure) -> str:
    """The figure as an inline ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return _data_uri(buffer.getvalue())


def subplots(figsize: tuple[float, float], ncols: int = 1):
    """A new Figure (not pyplot's: writing a report never loads pyplot nor touches the user's figures) and its
    Axes, one per column."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _saved_png_uri(path: Path) -> str | None:
    """The PNG file at ``path`` as a data URI; None where there is no such file."""
    try:
        return _data_uri(path.read_bytes())
    except OSError:
        return None


def _figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def run_figures(run: RunResults, pngs: dict[str, bytes] | None = None) -> list[str]:
    """The run's plots as ``<figure>`` elements. The two that the run folder holds as files
    (``save_run_figures``, drawn from the same results) are embedded as they are, not drawn again: from ``pngs``
    (by file name) where the caller has them, else from the folder."""
    pngs = pngs or {}

    def saved(name: str) -> str | None:
        return _data_uri(pngs[name]) if name in pngs else _saved_png_uri(run.path / name)

    figures = []
    present = [m for m in FIGURE_METRICS if any(m in v for k, v in run.aggregate.items() if k != "baseline")]
    for pair in (present[i : i + 2] for i in range(0, len(present), 2)):
        uri = saved(LAYERWISE_FIGURE) if pair == ["acc", "ce"] else None
        if uri is None:
            fig, axes = subplots((11, 4), ncols=2)
            for ax, metric in zip(axes, pair):
                layerwise(run, metric, ax=ax)
            axes[-1].set_visible(len(pair) == 2)
            uri = png_data_uri(fig)
        figures.append(_figure(uri, " and ".join(METRIC_LABELS[m] for m in pair) + " at every block"))
    if has_transfer(run):
        uri = saved(TRANSFER_FIGURE)
        if uri is None:
            fig, ax = subplots((6.5, 5.5))
            transfer_heatmap(run, "penalty", ax=ax)
            uri = png_data_uri(fig)
        figures.append(_figure(uri, "transfer penalty: translator of block i (rows) evaluated on block j (columns)"))
    if defined_transfer(run):
        fig, ax = subplots((6, 3.8))
        penalty_vs_distance(run, stages=bool(run.block_names), ax=ax)
        figures.append(_figure(png_data_uri(fig), "mean transfer penalty against block distance |i − j|, within and "
                                                  "across stages (bars: block pairs per distance; error bars, where "
                                                  "present: 95% bootstrap interval)"))
    return figures


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _cell(value: float | None) -> str:
    return f'<td class="undefined">{_number(value)}</td>' if value is None else f"<td>{_number(value)}</td>"


def metrics_table(run: RunResults) -> str:
    """Every metric of every lens at every block: one row per block, columns grouped by lens."""
    lens_types = [t for t in run.aggregate if t != "baseline"]
    columns = [(t, [m for m in TABLE_METRICS if m in run.aggregate[t]]) for t in lens_types]
    columns = [(t, ms) for t, ms in columns if ms]
    keys = layer_keys({k for t, ms in columns for m in ms for k in run.aggregate[t][m]})
    names = run.block_names or keys
    head = ['<tr><th class="name" rowspan="2">block</th>']
    head += [f'<th colspan="{len(ms)}">{html.escape(lens_label(t))}</th>' for t, ms in columns]
    head.append("</tr><tr>")
    head += [f"<th>{m}</th>" for _, ms in columns for m in ms]
    head.append("</tr>")
    body = []
    for key, name in zip(keys, names):
        cells = "".join(_cell(run.aggregate[t][m].get(key)) for t, ms in columns for m in ms)
        body.append(f'<tr><td class="name">{html.escape(name)}</td>{cells}</tr>')
    baseline = run.aggregate.get("baseline", {})
    caption = f"ce, kl, entropy in {reported_unit(run)}; acc, top5, agree as fractions; — = undefined."
    if baseline:
        caption += " Model output: " + ", ".join(f"{m} {_number(v['final'])}" for m, v in baseline.items())
    return (f'<div class="scroll"><table class="metrics" data-blocks="{len(keys)}"><thead>{"".join(head)}</thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p><small>{html.escape(caption)}</small></p>')


def provenance_table(run: RunResults) -> str:
    """Model, weights and their hash, data, image counts, seed, versions; then run.json in full."""
    info, options = run.run, run.run.get("options", {})
    fit = next(iter(info.get("fit", {}).values()), {})
    rows = [
        ("model", info.get("model")),
        ("weights", info.get("weights")),
        ("weights sha256", info.get("weights_sha256")),
        ("data", info.get("data")),
        ("fit images", f"{fit.get('images')} ({fit.get('split')} split)" if fit else None),
        ("eval images", f"{info.get('eval_images')} ({options.get('eval_split')} split)" if info else None),
        ("seed", options.get("seed")),
        ("tuned-lens objective", options.get("loss")),
        ("pooling grid", options.get("pool_grid")),
        ("vision-lens", info.get("vision_lens")),
        ("torch / python", f"{info.get('torch')} / {info.get('python')}" if info else None),
        ("result folder", str(run.path)),
    ]
    body = "".join(
        f'<tr><th class="name">{html.escape(k)}</th><td class="name">{html.escape(str(v))}</td></tr>'
        for k, v in rows if v is not None
    )
    settings = html.escape(json.dumps(info, indent=1)) if info else "no run.json in this folder"
    return (f'<div class="scroll"><table class="provenance">{body}</table></div>'
            f"<details><summary>all settings (run.json)</summary><pre>{settings}</pre></details>")


def run_section(run: RunResults, pngs: dict[str, bytes] | None = None) -> str:
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in run.non_finite)
    return (f'<section class="run"><h2>{html.escape(run.name)}</h2>{notes}{provenance_table(run)}'
            f'<h3>Figures</h3>{"".join(run_figures(run, pngs))}<h3>Metrics per block</h3>{metrics_table(run)}'
            '</section>')


def comparison_section(runs: list[RunResults]) -> str:
    """Cross-run plots on a relative-depth axis, for reports of several runs."""
    fig, axes = subplots((12, 4.2), ncols=2)
    layerwise(runs, "acc", x="relative_depth", lens_types=("tuned", "logit"), ax=axes[0])
    layerwise(runs, "kl", x="relative_depth", lens_types=("tuned", "logit"), ax=axes[1])
    figures = [_figure(png_data_uri(fig), "accuracy and KL against relative depth")]
    transfer_runs = [r for r in runs if defined_transfer(r)]
    if transfer_runs:
        fig, ax = subplots((6.5, 4))
        penalty_vs_distance(transfer_runs, relative=True, ax=ax)
        figures.append(_figure(png_data_uri(fig), "mean transfer penalty against block distance as a fraction of depth"))
    return f'<section><h2>All runs</h2>{"".join(figures)}</section>'


def render_report(results: ResultsLike | Iterable[ResultsLike], note: str | None = None,
                  figures: dict[str, bytes] | None = None) -> str:
    """The HTML page for one run, or for several side by side under a comparison section.

    ``note`` is a line shown under the title (e.g. the demo's "digits demo, not a real result"); ``figures`` are a
    single run's saved PNGs by file name (as ``plotting.save_run_figures`` returns them), embedded as they are.
    """
    runs = as_results(results)
    title = "vision-lens report: " + ", ".join(r.name for r in runs)
    note_line = f'<p class="note">{html.escape(note)}</p>' if note else ""
    sections = [comparison_section(runs)] if len(runs) > 1 else []
    columns = f"repeat({len(runs)}, minmax(0, 1fr))"
    sections.append(f'<div class="runs" style="grid-template-columns: {columns}">'
                    f'{"".join(run_section(r, figures if len(runs) == 1 else None) for r in runs)}</div>')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{note_line}{''.join(sections)}"
        f"<footer><small>written by vision-lens {__version__}</small></footer></body></html>\n"
    )


def write_report(
    results: ResultsLike | Iterable[ResultsLike], out: str | Path | None = None, note: str | None = None,
    figures: dict[str, bytes] | None = None,
) -> Path:
    """Write :func:`render_report` (with ``note`` under the title, ``figures`` embedded) to ``out``; default:
    ``report.html`` in the run folder (one run) or cwd (several)."""
    runs = as_results(results)
    out = Path(out) if out else (runs[0].path if len(runs) == 1 else Path.cwd()) / REPORT_NAME
    page = render_report(runs, note, figures)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, page)
    except OSError as exc:
        raise RunFolderError(f"cannot write the report {out} ({exc.strerror or exc}); pass --out a writable path") from exc
    return out


def report_runs(runs: Iterable[str | Path], out: str | Path | None = None) -> Path:
    """``vision-lens report``: :func:`write_report` for finished run folders; an incomplete one is refused."""
    runs = list(runs)
    for run in runs:
        if not Path(run).exists():
            raise FileNotFoundError(f"no such run folder: {run}")
        require_complete(run)
    return write_report(runs, out)
