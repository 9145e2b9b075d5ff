"""The analysis report: tables laid out like the study's Tables 2–5, plots, Markdown and HTML.

:func:`build_report` is the entry point for the CLI and the demo. The HTML file is
self-contained (styles inline, images embedded as data URIs, no external resource) so it can
be opened offline or mailed; the Markdown file links the PNGs written beside it.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analysis.evaluation import TRUTH_NAME, evaluate, summarise_curves
from analysis.predictions import Predictions
from slicerank_base import CLASSES, __version__

__all__ = [
    "PAPER_RATIO_NOTE",
    "STACK_SUFFIX",
    "ReportResult",
    "Table",
    "build_report",
    "render_html",
    "render_markdown",
]

#: The mapping between the study's Table 4 column names and the cells of its Table 3.
PAPER_RATIO_NOTE = (
    'The study\'s "recall" and "precision" (its Table 4) are not the textbook ratios of its '
    'Table 3: its "recall" is the positive predictive value of LV, TP / (TP + FP), i.e. the share '
    "of 'in the LV' predictions that are truly LV; its \"precision\" is the negative predictive "
    "value, TN / (TN + FN), i.e. the share of 'not in the LV' predictions that are truly not LV "
    "(the precision of the 'not in the LV' class). Both are column-wise ratios of the confusion "
    "matrix; Table 3 reproduces 0.90/0.49 and 0.97/0.68 only this way. The textbook sensitivity "
    "TP / (TP + FN) and specificity TN / (TN + FP) are listed separately."
)

_CLASS_TITLES = {"too_basal": "too basal", "lv": "in the LV", "too_apical": "too apical"}

#: A model named ``NAME + STACK_SUFFIX`` is NAME's predictions decoded per scan into monotone
#: stacks (too_basal… lv… too_apical); the report sets the two side by side.
STACK_SUFFIX = " (stack-decoded)"


@dataclass(frozen=True)
class Table:
    """One table of the report: a title, a header row, body rows and an optional note.

    A row whose only non-empty cell is the first is drawn as a section heading (the study's
    "Class: 'too basal'" rows).
    """

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote: the two report files, the figures and every number."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    summary: dict[str, Any] = field(repr=False)


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _fmt_ci(entry: Mapping[str, Any] | None, digits: int = 2) -> str:
    if entry is None or entry["value"] is None:
        return "n/a"
    return f"{_fmt(entry['value'], digits)} ({_fmt(entry['low'], digits)}–{_fmt(entry['high'], digits)})"


def _p_eq(p: float) -> str:
    text = _fmt_p(p)
    return f"P{text}" if text.startswith("<") else f"P={text}"


def _fmt_p(p: float) -> str:
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return slug or "model"


def _auc_cell(model: Mapping[str, Any], entry: Mapping[str, Any] | None) -> str:
    if not model["has_probabilities"]:
        return "— (labels only)"
    return _fmt_ci(entry)


def _table2(summary: Mapping[str, Any]) -> Table:
    models = summary["models"]
    names = list(models)
    rows: list[list[str]] = []
    for cls in CLASSES:
        rows.append(
            [f"Class: '{_CLASS_TITLES[cls]}' (n = {models[names[0]]['per_class'][cls]['support']})"]
            + [""] * len(names)
        )
        rows.append(
            ["Accuracy (95% CI)"]
            + [_fmt_ci(models[m]["per_class"][cls]["accuracy"]) for m in names]
        )
        rows.append(
            ["ROC AUC (95% CI)"]
            + [_auc_cell(models[m], models[m]["per_class"][cls]["auc"]) for m in names]
        )
        rows.append(
            ["F1-score (95% CI)"] + [_fmt_ci(models[m]["per_class"][cls]["f1"]) for m in names]
        )
    rows.append(["Overall"] + [""] * len(names))
    rows.append(["Accuracy (95% CI)"] + [_fmt_ci(models[m]["overall"]["accuracy"]) for m in names])
    rows.append(
        ["ROC AUC, weighted (95% CI)"]
        + [_auc_cell(models[m], models[m]["overall"]["weighted_auc"]) for m in names]
    )
    rows.append(
        ["ROC AUC, macro (95% CI)"]
        + [_auc_cell(models[m], models[m]["overall"]["macro_auc"]) for m in names]
    )
    rows.append(
        ["F1-score, weighted (95% CI)"]
        + [_fmt_ci(models[m]["overall"]["weighted_f1"]) for m in names]
    )
    rows.append(
        ["F1-score, macro (95% CI)"] + [_fmt_ci(models[m]["overall"]["macro_f1"]) for m in names]
    )
    s = summary["settings"]
    note = (
        "Per-class accuracy is one-vs-rest (that class against the other two merged), as in the "
        f"study. Proportion CIs: {s['proportion_interval']}; per-class ROC AUC CI: DeLong; "
        f"F1 and averaged-AUC CIs: percentile bootstrap over images ({s['n_boot']} resamples, "
        f"seed {s['seed']}). Weighted averages weight each class by its true count (the study's "
        "overall ROC AUC and F1 are consistent with this average, not with the macro one)."
    )
    return Table(
        f"Table 2. Performance of each model on the test set of {summary['n_images']} images",
        ["Performance metric", *names],
        rows,
        note,
    )


def _table3(summary: Mapping[str, Any]) -> Table:
    rows = []
    for name, model in summary["models"].items():
        b = model["binary"]
        rows.append([name, "Ground truth: in the LV", str(b["tp"]), str(b["fn"])])
        rows.append(["", "Ground truth: not in the LV", str(b["fp"]), str(b["tn"])])
    return Table(
        f"Table 3. Confusion matrices, 'in the LV' vs 'not in the LV', on {summary['n_images']} images",
        [
            "Model",
            "Predictions (n)",
            "Model prediction: in the LV",
            "Model prediction: not in the LV",
        ],
        rows,
        "'Not in the LV' merges 'too basal' and 'too apical', as in the study's statistical analysis.",
    )


def _comparison_for(summary: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((c for c in summary["comparisons"] if c["model"] == name), None)


def _table4(summary: Mapping[str, Any]) -> Table:
    ref = summary["reference"]
    rows = []
    for name, model in summary["models"].items():
        b = model["binary"]
        comparison = _comparison_for(summary, name)
        p = "-" if comparison is None else _fmt_p(comparison["mcnemar_binary"]["pvalue"])
        rows.append(
            [
                name,
                _fmt_ci(b["paper_recall"]),
                _fmt_ci(b["paper_precision"]),
                _fmt_ci(b["accuracy"]),
                p,
            ]
        )
    note = (
        f"P value from McNemar's test of LV vs not-LV correctness against '{ref}' (exact binomial "
        "when fewer than 25 images are discordant, otherwise chi-square with continuity "
        f"correction). CIs: {summary['settings']['proportion_interval']}. " + PAPER_RATIO_NOTE
    )
    return Table(
        f"Table 4. Recall, precision and accuracy (study's definitions), {summary['n_images']} images",
        [
            "Predictions from",
            "Recall* = TP/(TP+FP) (95% CI)",
            "Precision* = TN/(TN+FN) (95% CI)",
            "Accuracy (95% CI)",
            f"P value (vs '{ref}')",
        ],
        rows,
        note,
    )


def _table4b(summary: Mapping[str, Any]) -> Table:
    rows = []
    for name, model in summary["models"].items():
        b = model["binary"]
        rows.append(
            [
                name,
                _fmt_ci(b["sensitivity"]),
                _fmt_ci(b["specificity"]),
                _fmt_ci(b["paper_recall"]),
                _fmt_ci(b["paper_precision"]),
            ]
        )
    return Table(
        "Table 4b. Textbook ratios of the same LV vs not-LV matrices",
        ["Model", "Sensitivity (recall of LV)", "Specificity", "PPV (precision of LV)", "NPV"],
        rows,
    )


def _comparisons_table(summary: Mapping[str, Any]) -> Table | None:
    if not summary["comparisons"]:
        return None
    rows = []
    for c in summary["comparisons"]:
        mb, m3 = c["mcnemar_binary"], c["mcnemar_3class"]
        if c["delong"]:
            delong = "; ".join(f"{cls} {_fmt_p(d['pvalue'])}" for cls, d in c["delong"].items())
        else:
            delong = "— (needs probabilities from both)"
        rows.append(
            [
                f"{c['model']} vs {c['reference']}",
                f"b={mb['b']}, c={mb['c']}: {_p_eq(mb['pvalue'])} ({mb['method']})",
                f"b={m3['b']}, c={m3['c']}: {_p_eq(m3['pvalue'])} ({m3['method']})",
                delong,
            ]
        )
    return Table(
        "Paired comparisons on the same images",
        [
            "Models",
            "McNemar, LV vs not LV",
            "McNemar, three classes",
            "DeLong AUC test P per class",
        ],
        rows,
        "b = images the reference gets right and the model wrong; c = the reverse.",
    )


def _stack_table(summary: Mapping[str, Any]) -> Table | None:
    models = summary["models"]
    pairs = [(n, n + STACK_SUFFIX) for n in models if n + STACK_SUFFIX in models]
    if not pairs:
        return None
    rows = []
    for name, stacked in pairs:
        cells = [name]
        for key in ("accuracy", "macro_f1"):
            a = models[name]["overall"][key]["value"]
            b = models[stacked]["overall"][key]["value"]
            cells += [_fmt(a, 3), _fmt(b, 3), f"{b - a:+.3f}"]
        f1 = [models[stacked]["per_class"][c]["f1"]["value"] for c in CLASSES]
        cells.append(" / ".join(_fmt(v) for v in f1))
        rows.append(cells)
    return Table(
        "Per-slice vs stack-decoded predictions",
        [
            "Model",
            "Accuracy, per slice",
            "Accuracy, stack-decoded",
            "Change",
            "Macro F1, per slice",
            "Macro F1, stack-decoded",
            "Change",
            "Stack-decoded F1 (too basal / LV / too apical)",
        ],
        rows,
        "Stack-decoded: each scan's per-slice probabilities, ordered base to apex, decoded into "
        "the most probable sequence that reads too_basal… lv… too_apical (exact dynamic "
        "programming); its probabilities are the slices' marginals under that constraint.",
    )


def _table5(summary: Mapping[str, Any]) -> Table:
    counts = summary["class_counts"]
    names = list(counts)
    kappa_vs_truth = {
        (a["b"] if a["a"] == TRUTH_NAME else a["a"]): a["kappa"]
        for a in summary["agreement"]
        if TRUTH_NAME in (a["a"], a["b"])
    }
    rows = [[f"{_CLASS_TITLES[cls]} (n)"] + [str(counts[n][cls]) for n in names] for cls in CLASSES]
    rows.append(
        [f"Agreement vs {TRUTH_NAME} (Cohen's κ, 95% CI)"]
        + ["-"]
        + [_fmt_ci(kappa_vs_truth[n]) for n in names[1:]]
    )
    return Table(
        "Table 5. Class counts and agreement with the truth",
        ["Slice level / label set", *names],
        rows,
        "κ CI: large-sample standard error of Fleiss, Cohen & Everitt (1969), normal interval.",
    )


def _kappa_matrix(summary: Mapping[str, Any]) -> Table | None:
    names = list(summary["class_counts"])
    if len(names) < 3:
        return None
    lookup = {}
    for a in summary["agreement"]:
        lookup[(a["a"], a["b"])] = lookup[(a["b"], a["a"])] = a["kappa"]
    rows = [[r] + ["-" if r == c else _fmt_ci(lookup[(r, c)]) for c in names] for r in names]
    return Table(
        "Pairwise agreement between all label sets (Cohen's κ, 95% CI)",
        ["", *names],
        rows,
        "Between two raters this is inter-rater agreement, between two passes of one rater "
        "intra-rater agreement, between two labelling strategies strategy agreement.",
    )


def _curves_table(curves: Mapping[str, Any]) -> Table:
    rows = []
    for strategy, s in curves.items():
        acc, hours = s["final_accuracy"], s["final_hours"]
        rows.append(
            [
                strategy,
                str(s["runs"]),
                f"{acc['mean']:.3f} ({acc['min']:.3f}–{acc['max']:.3f})",
                f"{hours['mean']:.2f} ({hours['min']:.2f}–{hours['max']:.2f})",
            ]
        )
    return Table(
        "Label efficiency (simulated labelling runs)",
        [
            "Strategy",
            "Runs",
            "Final accuracy, mean (min–max over seeds)",
            "Hours used, mean (min–max)",
        ],
        rows,
    )


def _clustered_table(summary: Mapping[str, Any]) -> Table | None:
    """Accuracy and paired differences with the scan-clustered bootstrap (when scans known)."""
    c = summary.get("clustered")
    if not c:
        return None
    rows = [[name, _fmt_ci(m["accuracy"], 3), "", ""] for name, m in c["models"].items()]
    for d in c["comparisons"]:
        diff = d["accuracy_difference"]
        rows.append([
            f"{d['model']} − {d['reference']}", "",
            f"{diff['value']:+.3f} ({diff['low']:+.3f} to {diff['high']:+.3f})", _fmt_p(diff["pvalue"]),
        ])  # fmt: skip
    s = summary["settings"]
    return Table(
        f"Accuracy with scan-clustered CIs ({c['n_clusters']} scans, {summary['n_images']} images)",
        ["Model", "Accuracy (95% CI)", "Paired difference (95% CI)", "Bootstrap P"],
        rows,
        f"Bootstrap: {c['method']}; {s['n_boot']} resamples, seed {s['seed']}. Slices of one "
        "scan are not independent, so these intervals (not the per-image ones of Table 2) are "
        "the ones to quote for accuracy and its differences.",
    )


def _tables(summary: Mapping[str, Any]) -> list[Table]:
    tables = [_table2(summary), _table3(summary), _table4(summary), _table4b(summary)]
    clustered = _clustered_table(summary)
    if clustered is not None:
        tables.insert(0, clustered)
    for optional in (_comparisons_table(summary), _stack_table(summary)):
        if optional is not None:
            tables.append(optional)
    tables.append(_table5(summary))
    matrix = _kappa_matrix(summary)
    if matrix is not None:
        tables.append(matrix)
    if summary.get("curves"):
        tables.append(_curves_table(summary["curves"]))
    # The tables are written for the usual 95%; relabel them when another level was asked for.
    label = f"{100 * summary['settings']['confidence']:g}% CI"
    if label != "95% CI":

        def relabel(text: str) -> str:
            return text.replace("95% CI", label)

        tables = [
            Table(
                relabel(t.title),
                [relabel(h) for h in t.header],
                [[relabel(c) for c in row] for row in t.rows],
                t.note,
            )
            for t in tables
        ]
    return tables


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(
    title: str, summary: Mapping[str, Any], figures: Sequence[tuple[str, str]]
) -> str:
    """The Markdown report; ``figures`` are ``(caption, relative PNG path)`` pairs."""
    lines = [f"# {title}", ""]
    if summary.get("lead"):
        lines += ["## In brief", ""] + [f"- {x}" for x in summary["lead"]] + [""]
    lines += [_intro(summary), ""]
    for table in _tables(summary):
        lines += [
            f"## {table.title}",
            "",
            "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        ]
        lines.append("|" + "|".join(["---"] * len(table.header)) + "|")
        for row in table.rows:
            if all(not cell for cell in row[1:]):
                row = [f"**{row[0]}**", *row[1:]]
            lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        if table.note:
            lines += ["", f"*{table.note}*"]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for caption, rel in figures:
            lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 0.3rem; font-size: 0.92rem; }
th, td { border-top: 1px solid #bbb; border-bottom: 1px solid #bbb; padding: 0.3rem 0.7rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr.section td { font-weight: 600; background: #fafafa; }
p.note { font-size: 0.85rem; color: #555; max-width: 60rem; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
"""


def render_html(
    title: str, summary: Mapping[str, Any], figures: Sequence[tuple[str, bytes]]
) -> str:
    """The self-contained HTML report; ``figures`` are ``(caption, PNG bytes)`` pairs, embedded."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if summary.get("lead"):
        parts.append(
            "<h2>In brief</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in summary["lead"]) + "</ul>"
        )
    parts.append(f"<p>{e(_intro(summary))}</p>")
    for table in _tables(summary):
        parts.append(f"<h2>{e(table.title)}</h2><table><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in table.header]
        parts.append("</tr></thead><tbody>")
        for row in table.rows:
            if all(not cell for cell in row[1:]):
                parts.append(
                    f'<tr class="section"><td colspan="{len(table.header)}">{e(row[0])}</td></tr>'
                )
            else:
                parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
        if table.note:
            parts.append(f'<p class="note">{e(table.note)}</p>')
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    if summary["notes"]:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in summary["notes"]) + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _intro(summary: Mapping[str, Any]) -> str:
    names = ", ".join(f"'{n}'" for n in summary["models"])
    return (
        f"{len(summary['models'])} label set(s) ({names}) compared with the ground truth on "
        f"{summary['n_images']} images; classes {', '.join(summary['classes'])}. Paired tests use "
        f"'{summary['reference']}' as the reference. Generated by slicerank {__version__} on "
        f"{summary.get('generated', '')}."
    )


def build_report(
    truth: Mapping[str, str],
    predictions: Mapping[str, Predictions],
    out_dir: str | os.PathLike[str],
    *,
    curves: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    proportion_method: str = "clopper-pearson",
    reference: str | None = None,
    title: str = "slicerank: labelling strategies and models compared",
    clusters: Mapping[str, str] | None = None,
    lead: Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> ReportResult:
    """Evaluate ``predictions`` against ``truth`` and write ``report.md``, ``report.html`` and PNGs.

    Signature: ``build_report(truth: Mapping[str, str], predictions: Mapping[str, Predictions],
    out_dir, *, curves=None, seed=0, n_boot=2000, confidence=0.95,
    proportion_method="clopper-pearson", reference=None, title=...) -> ReportResult``.

    ``truth`` maps image id → class name; ``predictions`` maps a display name → a
    :class:`~analysis.predictions.Predictions` (with or without probabilities) covering exactly
    the truth's images. ``clusters`` (image id → scan id) adds accuracy and paired differences
    with a bootstrap that resamples scans. ``lead``: a few plain lines that open the report
    ("In brief"), or a function that writes them from the summary. ``curves`` are label-efficiency runs as read by
    :func:`analysis.io.read_curves` (``simulate --compare`` output). The first prediction set
    (or ``reference``) is the baseline of McNemar's and DeLong's tests. Bootstrap intervals are
    reproducible for a given ``seed``. Raises ``ValueError`` (naming the model) on mismatched
    ids or unknown classes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluate(
        truth,
        predictions,
        seed=seed,
        n_boot=n_boot,
        confidence=confidence,
        proportion_method=proportion_method,
        reference=reference,
        clusters=clusters,
    )
    if lead is not None:
        summary["lead"] = list(lead(summary) if callable(lead) else lead)
    summary["generated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if curves:
        summary["curves"] = summarise_curves(curves)

    # Plotting imports matplotlib: keep it out of module import so the CLI starts fast.
    from analysis.plots import plot_confusion, plot_label_efficiency, plot_roc

    ids = sorted(truth)
    y_true = [truth[i] for i in ids]
    figures: list[tuple[str, Path]] = []
    scored = {
        name: p.probability_matrix(ids) for name, p in predictions.items() if p.has_probabilities
    }
    if scored:
        aucs = {
            name: {
                cls: (
                    entry["value"]
                    if (entry := summary["models"][name]["per_class"][cls]["auc"])
                    else None
                )
                for cls in CLASSES
            }
            for name in scored
        }
        figures.append(
            (
                "ROC curves, one-vs-rest, per class and model",
                plot_roc(y_true, scored, out / "roc.png", aucs=aucs),
            )
        )
    used: set[str] = set()
    for name, model in summary["models"].items():
        slug = _slug(name)
        while slug in used:
            slug += "-x"
        used.add(slug)
        binary = [
            [model["binary"]["tp"], model["binary"]["fn"]],
            [model["binary"]["fp"], model["binary"]["tn"]],
        ]
        path = plot_confusion(
            name, model["confusion_matrix"], binary, out / f"confusion-{slug}.png"
        )
        figures.append((f"Confusion matrices: {name} (truth in rows)", path))
    if curves:
        path = plot_label_efficiency(curves, out / "label_efficiency.png")
        figures.append(
            (
                "Label efficiency: accuracy vs labelling hours, per strategy (band: min–max over seeds)",
                path,
            )
        )

    md_path = out / "report.md"
    md_path.write_text(
        render_markdown(title, summary, [(c, p.name) for c, p in figures]), encoding="utf-8"
    )
    html_path = out / "report.html"
    html_path.write_text(
        render_html(title, summary, [(c, p.read_bytes()) for c, p in figures]), encoding="utf-8"
    )
    return ReportResult(
        markdown=md_path, html=html_path, figures=tuple(p for _, p in figures), summary=summary
    )
