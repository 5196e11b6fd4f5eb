{#-
  A windowed run (Dagster's hourly partitions: RTML_DBT_MIN_TS / MAX_TS, or the vars min_ts / max_ts)
  tests the rows it wrote. The row-level data tests (not_null, accepted_values, relationships, value
  ranges) of a model whose `meta.run_window_column` names its event-time column read only the run's
  window: the rows outside it were written, and tested, by the runs of their own hours, and an hourly
  build that tests every row of a growing table costs more every hour (1M rows: the tests took 5.1 s of
  a 10.2 s hourly build, 1.6 s windowed; docs/benchmarks.md). Whole-table tests (unique, row counts,
  recent data) and runs without a window read everything.

  dbt's documented hook for the `where` config of generic tests (`get_where_subquery`), extended.
  env_var() is read here at execution time only, so partial parsing stays valid (see partition_window).
-#}
{% macro get_where_subquery(relation) -%}
    {%- set clauses = [config.get('where'), run_window_clause()] | select | list -%}
    {%- if clauses -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ clauses | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {{ return(filtered) }}
    {%- else -%}
        {{ return(relation) }}
    {%- endif -%}
{%- endmacro %}

{% macro run_window_clause() -%}
    {%- set whole_table = ['unique', 'expect_table_row_count_to_be_between',
                           'expect_row_values_to_have_recent_data', 'expect_compound_columns_to_be_unique'] -%}
    {%- set lo, hi = window_bound('min_ts'), window_bound('max_ts') -%}
    {%- if not execute or lo is none or hi is none or model.test_metadata is none
          or model.test_metadata.name in whole_table -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set tested = graph.nodes.get(model.attached_node) -%}
    {%- set column = tested.config.meta.get('run_window_column') if tested is not none else none -%}
    {%- if column is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(column ~ " >= '" ~ lo ~ "'::timestamptz and " ~ column ~ " < '" ~ hi ~ "'::timestamptz") }}
{%- endmacro %}
