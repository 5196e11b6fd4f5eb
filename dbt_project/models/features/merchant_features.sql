{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['merchant_id', 'feature_date'],
    on_schema_change='fail',
    indexes=[{'columns': ['merchant_id', 'feature_date'], 'unique': True}],
) }}

{#- One row per merchant and day with activity: the merchant's features as of the start of that day
    (UTC). A transaction at time t joins the row of (merchant_id, date of t): only data before t's day. -#}
{%- set stg = ref('stg_transactions') %}
{%- set day_lo -%} date_trunc('day', {{ window_lo(stg, 'max(feature_ts)') }}, 'UTC') {%- endset %}
{%- set spine -%}
    select distinct merchant_id, (event_ts at time zone 'UTC')::date as feature_date
    from {{ stg }}
    where event_ts >= {{ day_lo }}
      and event_ts < {{ window_hi() }}
{%- endset %}

{#- Every feature_ts of the spine lies in [day_lo, window_hi): constants in an hourly run. -#}
{{ merchant_features_sql(spine, stg, ref('stg_labels'), ref('merchant_daily'), lo_ts=day_lo, hi_ts=window_hi()) }}
