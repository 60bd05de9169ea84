"""Shared glue: turn core step reports into Dagster metadata, GX reports into check results."""

import base64
import os
from collections.abc import Callable

import dagster as dg
import pandas as pd

from probex_core.quality import QualityReport


def md_table(df: pd.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    shown = df.head(max_rows)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_(empty)_")


def md_png(png: bytes, title: str) -> dg.MetadataValue:
    """The UI has no image type: embed the PNG as base64 in markdown."""
    data = base64.b64encode(png).decode()
    return dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{data})")


def md_svg_curve(xs: list[float], ys: list[float], title: str) -> dg.MetadataValue:
    """A line chart as a tiny inline SVG: the UI folds markdown of 1,000 characters or more
    behind "[Show Markdown]" (a PNG always is), a polyline of a few dozen points is not."""
    w, h, pad = 240, 70, 4
    step = max(1, len(xs) // 40)  # at most ~40 points keeps the markdown short
    xs, ys = xs[::step], ys[::step]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (w - 2 * pad) / ((x1 - x0) or 1)
    sy = (h - 2 * pad) / ((y1 - y0) or 1)
    pts = " ".join(
        f"{pad + (x - x0) * sx:.0f},{h - pad - (y - y0) * sy:.0f}"
        for x, y in zip(xs, ys, strict=True)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
        f'<polyline fill="none" stroke="#4f43dd" stroke-width="2" points="{pts}"/></svg>'
    )
    data = base64.b64encode(svg.encode()).decode()
    label = f"{title}: {y0:.3f}–{y1:.3f} over {x0:g}–{x1:g}"
    return dg.MetadataValue.md(f"![{title}](data:image/svg+xml;base64,{data})<br>{label}")


def report_metadata(report) -> dict:
    """A core StepReport → the metadata the UI shows."""
    meta: dict = dict(report.summary)
    for name, df in report.tables.items():
        meta[name] = md_table(df)
    for name, (xs, ys) in report.curves.items():
        if len(xs) >= 2:
            meta[name] = md_svg_curve(xs, ys, name)
    for name, png in report.plots.items():
        meta[name] = md_png(png, name)
    return meta


def materialize_result(report) -> dg.MaterializeResult:
    """A core StepReport → what its asset returns: the UI's metadata and the data version."""
    return dg.MaterializeResult(
        metadata=report_metadata(report), data_version=dg.DataVersion(report.data_version)
    )


def check_result(report: QualityReport, extra: dict | None = None) -> dg.AssetCheckResult:
    meta = {"rows": report.n_rows, "expectations": report.evaluated, "summary": report.summary()}
    meta.update(extra or {})
    return dg.AssetCheckResult(passed=report.success, metadata=meta)


PROGRESS_ENV = "PROBEX_PROGRESS"  # set by `probex run`: progress lines also go to stdout


def progress(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    """Where a step's progress lines go: the run's log (the UI shows it) and, under
    `probex run`, the terminal."""
    echo = os.environ.get(PROGRESS_ENV) == "1"

    def say(line: str) -> None:
        context.log.info(line)
        if echo:
            print(f"        {line}", flush=True)

    return say
