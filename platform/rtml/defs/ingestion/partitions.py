"""Partitions of the raw streams: hourly transactions, daily labels, one partition per landing file."""

from __future__ import annotations

import dagster as dg

from rtml.config import get_settings

# The one setting read when the module is imported (still at code-location load): every partitioned asset,
# job and schedule is a module-level definition built on these partitions.
_start = get_settings().simulator.start

transactions_partitions = dg.HourlyPartitionsDefinition(start_date=_start.strftime("%Y-%m-%d-%H:%M"))
labels_partitions = dg.DailyPartitionsDefinition(start_date=_start.strftime("%Y-%m-%d"))
landing_file_partitions = dg.DynamicPartitionsDefinition(name="landing_files")
