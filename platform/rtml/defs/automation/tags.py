"""Tags every automated run carries (the Runs page of the Dagster UI filters on them)."""

TRIGGER_TAG = "rtml/trigger"
"""Why a run was requested: the schedule, the failed check, the finished run or the file behind it."""
