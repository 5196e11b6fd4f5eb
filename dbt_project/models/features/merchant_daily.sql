{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['merchant_id', 'txn_date'],
    on_schema_change='fail',
    pre_hook="{{ delete_days('day_ts', ref('stg_transactions')) }}",
    indexes=[{'columns': ['merchant_id', 'txn_date'], 'unique': True}],
) }}

{#- Transactions per merchant and UTC day: the daily building block of the merchant windows
    (macro merchant_features_sql), kept incrementally so that an hourly run re-aggregates only the
    days its window touches instead of 30 days of every merchant. -#}
{%- set stg = ref('stg_transactions') %}

select
    merchant_id,
    (event_ts at time zone 'UTC')::date as txn_date,
    date_trunc('day', event_ts, 'UTC') as day_ts,
    count(*)::integer as txn_count,
    sum(amount)::numeric(16, 2) as amount_sum,
    max(loaded_at) as loaded_at
from {{ stg }}
where event_ts >= {{ day_lo(stg) }}
  and event_ts < {{ day_hi() }}
group by 1, 2, 3
