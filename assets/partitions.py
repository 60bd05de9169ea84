"""One dynamic partition per recovered Model Tree."""

import dagster as dg

TREES = dg.DynamicPartitionsDefinition(name="trees")
