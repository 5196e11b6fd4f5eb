{#-
  STAND-IN for the metaplane/dbt_expectations package (https://hub.getdbt.com/metaplane/dbt_expectations),
  which `dbt deps` cannot download here (the dbt hub is unreachable). Same test names and arguments as
  the package, so switching is: add the package to packages.yml, `dbt deps`, delete this file
  (see dbt_project/README.md). Only the arguments this project uses are implemented.
-#}

{% test expect_column_values_to_be_between(model, column_name, min_value=none, max_value=none, row_condition=none, strictly=false) %}
{%- set lower = '>' if strictly else '>=' -%}
{%- set upper = '<' if strictly else '<=' -%}
select *
from {{ model }}
where {{ column_name }} is not null
  {% if row_condition %}and ({{ row_condition }}){% endif %}
  and not (
    true
    {% if min_value is not none %}and {{ column_name }} {{ lower }} {{ min_value }}{% endif %}
    {% if max_value is not none %}and {{ column_name }} {{ upper }} {{ max_value }}{% endif %}
  )
{% endtest %}


{% test expect_table_row_count_to_be_between(model, min_value=none, max_value=none, group_by=none, row_condition=none, strictly=false) %}
{%- set lower = '>' if strictly else '>=' -%}
{%- set upper = '<' if strictly else '<=' -%}
with counts as (
    select {% if group_by %}{{ group_by | join(', ') }}, {% endif %}count(*) as row_count
    from {{ model }}
    {% if row_condition %}where {{ row_condition }}{% endif %}
    {% if group_by %}group by {{ group_by | join(', ') }}{% endif %}
)
select *
from counts
where not (
    true
    {% if min_value is not none %}and row_count {{ lower }} {{ min_value }}{% endif %}
    {% if max_value is not none %}and row_count {{ upper }} {{ max_value }}{% endif %}
)
{% endtest %}


{% test expect_row_values_to_have_recent_data(model, column_name, datepart, interval, row_condition=none) %}
-- fails (one row) when the newest value is older than `interval` `datepart`s, or the table is empty
select max_ts
from (
    select max({{ column_name }}) as max_ts
    from {{ model }}
    {% if row_condition %}where {{ row_condition }}{% endif %}
) as newest
where max_ts is null
   or max_ts < now() - interval '{{ interval }} {{ datepart }}'
{% endtest %}


{% test expect_compound_columns_to_be_unique(model, column_list, quote_columns=false, ignore_row_if='all_values_are_missing', row_condition=none) %}
{%- set columns = [] -%}
{%- for c in column_list -%}{%- do columns.append(adapter.quote(c) if quote_columns else c) -%}{%- endfor -%}
{%- set missing = ' and ' if ignore_row_if == 'all_values_are_missing' else ' or ' -%}
select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
where not ({% for c in columns %}{{ c }} is null{% if not loop.last %}{{ missing }}{% endif %}{% endfor %})
  {% if row_condition %}and ({{ row_condition }}){% endif %}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
