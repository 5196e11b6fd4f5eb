"""Reading the ``*_latest`` tables from PostgreSQL, already rendered as the text Redis stores.

PostgreSQL does the rendering (``OnlineField.sql_text``) and streams it with ``COPY ... TO STDOUT``;
pyarrow parses the CSV into string columns. No Python runs per row.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.csv as pv

from rtml.features.online.schema import OnlineView


def fetch_latest(database_url: str, view: OnlineView) -> pa.Table:
    """The view's online table: the entity key and every stored field, as strings (NULL → null)."""
    buffer = io.BytesIO()
    sql = f"copy ({view.select_sql()}) to stdout (format csv)"
    with psycopg.connect(database_url) as conn, conn.cursor() as cur, cur.copy(sql) as copy:
        for chunk in copy:
            buffer.write(chunk)
    columns = [view.entity_key, *view.field_names]
    if buffer.tell() == 0:
        return pa.table({name: pa.array([], pa.string()) for name in columns})
    buffer.seek(0)
    return pv.read_csv(
        buffer,
        read_options=pv.ReadOptions(column_names=columns, block_size=16 << 20),
        convert_options=pv.ConvertOptions(
            column_types={name: pa.string() for name in columns},
            strings_can_be_null=True,  # COPY writes NULL unquoted-empty and '' as "" (kept)
            quoted_strings_can_be_null=False,
        ),
    )


def has_rows(database_url: str, view: OnlineView) -> bool:
    """Whether the view's online table exists and holds a row (something to push)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select to_regclass(%s)", (view.relation,)).fetchone()
        if row is None or row[0] is None:
            return False
        found = conn.execute(f"select exists (select 1 from {view.relation})").fetchone()
    return bool(found and found[0])
