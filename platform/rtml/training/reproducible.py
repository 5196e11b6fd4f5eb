"""Byte-stable files for the DVC pipeline: the same model and the same scores give the same bytes.

``skops.io.dump`` is not byte-stable: each zip entry carries the time it was written, arrays are stored
as ``<id(array)>.npy`` and ``schema.json`` records ``__id__: id(object)`` (memory addresses). skops has no
option for it (0.x), so :func:`canonical_skops` rewrites the archive: ids renumbered in order of first
appearance (the traversal order of the fitted model, which is deterministic), entries in the original
order with a fixed timestamp. The result loads like the original (skops only compares ids with each
other and resolves file names through ``schema.json``).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import skops.io

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""The oldest timestamp a zip entry can hold: every entry gets it."""


def dump_skops(obj: Any, path: Path) -> None:
    """``skops.io.dump`` with canonical bytes (:func:`canonical_skops`)."""
    path.write_bytes(canonical_skops(skops.io.dumps(obj)))


def canonical_skops(data: bytes) -> bytes:
    """The skops archive ``data`` with memory ids renumbered and entry timestamps fixed."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
        numbers: dict[str, int] = {}
        renamed: dict[str, str] = {}

        def number(old: object) -> int:
            return numbers.setdefault(str(old), len(numbers))

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                out: dict[str, Any] = {}
                for key, value in node.items():
                    if key == "__id__" and isinstance(value, int):
                        out[key] = number(value)
                    elif key == "file" and isinstance(value, str) and value in archive.NameToInfo:
                        stem, _, suffix = value.rpartition(".")
                        renamed[value] = f"{number(stem)}.{suffix}"
                        out[key] = renamed[value]
                    else:
                        out[key] = walk(value)
                return out
            if isinstance(node, list):
                return [walk(item) for item in node]
            return node

        schema = walk(schema)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as out:
            for info in archive.infolist():
                name = "schema.json" if info.filename == "schema.json" else renamed[info.filename]
                content = (
                    json.dumps(schema, indent=2).encode()
                    if info.filename == "schema.json"
                    else archive.read(info)
                )
                out.writestr(zipfile.ZipInfo(name, date_time=ZIP_EPOCH), content)
    return buffer.getvalue()


def write_curve(path: Path, columns: Sequence[str], *values: np.ndarray, digits: int = 6) -> None:
    """A curve as CSV for ``dvc plots`` (rounded: text that does not change with float noise)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in zip(*values, strict=True):
            writer.writerow(f"{round(float(v), digits):.{digits}f}" for v in row)


__all__ = ["canonical_skops", "dump_skops", "write_curve"]
