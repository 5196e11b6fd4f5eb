{#-
  The event-time window an incremental run (re)computes, as two SQL timestamptz expressions [lo, hi).

  * full build / --full-refresh:           (-infinity, infinity)
  * incremental with a window:             [min_ts, max_ts)   -- Dagster passes the partition window
    The window comes from the vars `min_ts`/`max_ts` or, when they are unset, from the environment
    variables RTML_DBT_MIN_TS / RTML_DBT_MAX_TS. Prefer the environment: a new `--vars` value makes
    dbt re-parse the whole project (~8 s), while env_var() here is only evaluated at execution time
    (is_incremental() is false while parsing), so partial parsing stays valid.
  * incremental without vars:              from the earliest event loaded since the last run onward
    (late rows change the features of every later row of the same customer, so recompute those);
    models without `loaded_at` pass `watermark_sql` (for example `max(feature_ts)`) instead.
  Rows outside the window are never touched; window features still read the 30 days of history before it.
-#}
{% macro window_bound(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none -%}
        {%- set value = env_var('RTML_DBT_' ~ (name | upper), '') or none -%}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}

{% macro window_lo(source_relation, watermark_sql=none) -%}
    {%- if not is_incremental() -%}
        '-infinity'::timestamptz
    {%- elif window_bound('min_ts') is not none -%}
        '{{ window_bound("min_ts") }}'::timestamptz
    {%- elif watermark_sql is not none -%}
        (select coalesce({{ watermark_sql }}, '-infinity'::timestamptz) from {{ this }})
    {%- else -%}
        (select coalesce(min(s.event_ts), 'infinity'::timestamptz) from {{ source_relation }} as s
          where s.loaded_at > (select coalesce(max(t.loaded_at), '-infinity'::timestamptz) from {{ this }} as t))
    {%- endif -%}
{%- endmacro %}

{% macro window_hi() -%}
    {%- if is_incremental() and window_bound('max_ts') is not none -%}
        '{{ window_bound("max_ts") }}'::timestamptz
    {%- else -%}
        'infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}

{#- Pre-hook of incremental models: drop the rows of the window first, so rows that disappeared from
    the source (a re-loaded partition) disappear here too. delete+insert on the unique key does the rest. -#}
{% macro delete_window(ts_column, source_relation) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ ts_column }} >= {{ window_lo(source_relation) }} and {{ ts_column }} < {{ window_hi() }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- Training cut-off: labels known after it are not used. Default: every label known so far. -#}
{% macro training_cutoff() -%}
    {%- if var('training_cutoff', none) is not none -%}
        '{{ var("training_cutoff") }}'::timestamptz
    {%- else -%}
        (select coalesce(max(label_ts), 'infinity'::timestamptz) from {{ ref('stg_labels') }})
    {%- endif -%}
{%- endmacro %}

{#- The run window widened to whole UTC days [day_lo, day_hi): for daily aggregates (merchant_daily),
    which recompute every day the window touches in full. -#}
{% macro day_lo(source_relation) -%}
    date_trunc('day', {{ window_lo(source_relation) }}, 'UTC')
{%- endmacro %}

{% macro day_hi() -%}
    (date_trunc('day', {{ window_hi() }} - interval '1 microsecond', 'UTC') + interval '1 day')
{%- endmacro %}

{% macro delete_days(day_column, source_relation) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ day_column }} >= {{ day_lo(source_relation) }} and {{ day_column }} < {{ day_hi() }}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
