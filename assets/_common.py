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


def report_metadata(report) -> dict:
    """A core StepReport → the metadata the UI shows."""
    meta: dict = dict(report.summary)
    for name, df in report.tables.items():
        meta[name] = md_table(df)
    for name, png in report.plots.items():
        meta[name] = md_png(png, name)
    return meta


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
