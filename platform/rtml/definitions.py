"""The code location (workspace.yaml): every Dagster definition under ``rtml/defs/``, one folder per
domain, is autoloaded here, so adding a domain needs no edit in this file."""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
