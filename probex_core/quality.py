"""A thin Great Expectations 1.x adapter: validate a pandas frame against a suite.

`dagster-ge` pins GX < 1.0, so the pipeline runs GX itself and maps the outcome to Dagster
asset checks (in `assets/`). One ephemeral context per process; each call registers a fresh
suite and validation definition under a unique name.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import cache

import pandas as pd

_counter = itertools.count()


class _Expectations:
    """`great_expectations.expectations`, imported when a check first builds an expectation:
    the import takes 2–3 s, which a process that only orchestrates runs (a run's parent, a
    Dask run's orchestrator, the CLI) never needs."""

    def __getattr__(self, name: str):
        import great_expectations.expectations as expectations

        return getattr(expectations, name)


gxe = _Expectations()


@dataclass(frozen=True)
class QualityReport:
    """The outcome of one suite on one frame."""

    suite: str  # the suite's name, e.g. "hub_repos"
    success: bool  # every expectation held
    n_rows: int  # rows validated
    evaluated: int  # expectations evaluated
    failures: list[str] = field(default_factory=list)  # one line per failed expectation

    def summary(self) -> str:
        head = f"{self.suite}: {self.evaluated - len(self.failures)}/{self.evaluated} expectations hold on {self.n_rows} rows"
        return "\n".join([head, *self.failures])


@cache
def _context():
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except ImportError:  # older/newer layouts: progress bars only cost stderr noise
        logging.getLogger(__name__).debug("GX progress bar settings not available")
    source = ctx.data_sources.add_pandas("probex")
    return ctx, source


def validate(df: pd.DataFrame, suite_name: str, expectations: list) -> QualityReport:
    """Run `expectations` (GX expectation objects) on `df` and report which failed."""
    import great_expectations as gx

    ctx, source = _context()
    n = next(_counter)
    asset = source.add_dataframe_asset(f"{suite_name}_{n}")
    batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{suite_name}_{n}"))
    for expectation in expectations:
        # an expectation object belongs to one suite: add a fresh copy each time
        suite.add_expectation(expectation.copy(update={"id": None}))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_{n}", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": df})
    failures = []
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
            detail = r.result.get("unexpected_count") if r.result else None
            failures.append(f"FAILED {cfg.type} {kwargs} (unexpected: {detail})")
    return QualityReport(
        suite=suite_name,
        success=bool(result.success),
        n_rows=len(df),
        evaluated=len(result.results),
        failures=failures,
    )
