{{ config(materialized='table', indexes=[{'columns': ['customer_id'], 'unique': True}]) }}

{#-
  The speed layer's batch part (docs/streaming.md): per customer, as of `as_of_ts` (the instant
  customer_features_latest is as of: newest event + 1 microsecond; var `stream_as_of` or the environment
  variable RTML_DBT_STREAM_AS_OF pins another one),
  the exact inputs of customer_features' windowed aggregates over [as_of_ts - w, as_of_ts), and the
  "edge events": the rows that leave a window's trailing edge while the stream carries the features
  forward, i.e. those in [as_of_ts - w, as_of_ts - w + horizon) for w = 1 h, 24 h, 7 d, 30 d. With the
  stream's events at or after as_of_ts, rtml.streaming.features derives every customer_features column
  for a transaction at any t in [as_of_ts, valid_until] exactly (the parity test proves it against
  customer_features). Sums stay numeric (exact); the 30-day sum of squares gives stddev_samp exactly.
-#}
{%- set stg = ref('stg_transactions') %}
{#- var, else the environment (read only at execution: a changed env value keeps dbt's partial parse) #}
{%- set as_of_pin = var('stream_as_of', none) %}
{%- set horizon = var('stream_horizon', none) %}
{%- if execute %}
    {%- set as_of_pin = as_of_pin or env_var('RTML_DBT_STREAM_AS_OF', '') or none %}
    {%- set horizon = horizon or env_var('RTML_DBT_STREAM_HORIZON', '') or none %}
{%- endif %}
{%- set horizon = horizon or '2 hours' %}
{%- set windows = ['1 hour', '24 hours', '7 days', '30 days'] %}

with as_of as (
    {%- if as_of_pin is not none %}
    select '{{ as_of_pin }}'::timestamptz as as_of_ts
    {%- else %}
    select coalesce(max(event_ts), now()) + interval '1 microsecond' as as_of_ts from {{ stg }}
    {%- endif %}
),

history as (
    select
        t.customer_id, t.merchant_id, t.event_ts, t.amount, a.as_of_ts,
        case when extract(hour from t.event_ts at time zone 'UTC') < 6 then 1 else 0 end as is_night,
        (
            {%- for w in windows %}
            (t.event_ts >= a.as_of_ts - interval '{{ w }}'
             and t.event_ts < a.as_of_ts - interval '{{ w }}' + interval '{{ horizon }}')
            {%- if not loop.last %} or {% endif %}
            {%- endfor %}
        ) as is_edge
    from {{ stg }} as t
    cross join as_of as a
    where t.event_ts >= a.as_of_ts - interval '30 days'
      and t.event_ts < a.as_of_ts
),

aggregates as (
    select
        customer_id,
        count(*) filter (where event_ts >= as_of_ts - interval '1 hour') as txn_count_1h,
        coalesce(sum(amount) filter (where event_ts >= as_of_ts - interval '1 hour'), 0) as amount_sum_1h,
        count(*) filter (where event_ts >= as_of_ts - interval '24 hours') as txn_count_24h,
        coalesce(sum(amount) filter (where event_ts >= as_of_ts - interval '24 hours'), 0) as amount_sum_24h,
        count(*) filter (where event_ts >= as_of_ts - interval '7 days') as txn_count_7d,
        coalesce(sum(amount) filter (where event_ts >= as_of_ts - interval '7 days'), 0) as amount_sum_7d,
        coalesce(sum(is_night) filter (where event_ts >= as_of_ts - interval '7 days'), 0) as night_count_7d,
        count(*) as txn_count_30d,
        sum(amount) as amount_sum_30d,
        sum(amount * amount) as amount_sumsq_30d,
        array_agg(event_ts order by event_ts) filter (where is_edge) as edge_ts,
        array_agg(amount order by event_ts) filter (where is_edge) as edge_amounts
    from history
    group by customer_id
),

merchants_24h as (
    -- distinct merchants cannot be subtracted: keep each merchant's newest time in the 24 h window
    select customer_id, array_agg(merchant_id order by merchant_id) as merchant_ids_24h,
           array_agg(last_ts order by merchant_id) as merchant_last_ts_24h
    from (
        select customer_id, merchant_id, max(event_ts) as last_ts
        from history
        where event_ts >= as_of_ts - interval '24 hours'
        group by customer_id, merchant_id
    ) as m
    group by customer_id
),

everything as (
    select t.customer_id, max(t.event_ts) as last_txn_ts,
           array_agg(distinct t.merchant_id order by t.merchant_id) as known_merchant_ids
    from {{ stg }} as t
    cross join as_of as a
    where t.event_ts < a.as_of_ts
    group by t.customer_id
)

select
    e.customer_id,
    a.as_of_ts,
    a.as_of_ts + interval '{{ horizon }}' as valid_until,
    e.last_txn_ts,
    e.known_merchant_ids,
    coalesce(g.txn_count_1h, 0)::integer as txn_count_1h,
    coalesce(g.amount_sum_1h, 0) as amount_sum_1h,
    coalesce(g.txn_count_24h, 0)::integer as txn_count_24h,
    coalesce(g.amount_sum_24h, 0) as amount_sum_24h,
    coalesce(g.txn_count_7d, 0)::integer as txn_count_7d,
    coalesce(g.amount_sum_7d, 0) as amount_sum_7d,
    coalesce(g.night_count_7d, 0)::integer as night_count_7d,
    coalesce(g.txn_count_30d, 0)::integer as txn_count_30d,
    coalesce(g.amount_sum_30d, 0) as amount_sum_30d,
    coalesce(g.amount_sumsq_30d, 0) as amount_sumsq_30d,
    coalesce(g.edge_ts, '{}') as edge_ts,
    coalesce(g.edge_amounts, '{}') as edge_amounts,
    coalesce(m.merchant_ids_24h, '{}') as merchant_ids_24h,
    coalesce(m.merchant_last_ts_24h, '{}') as merchant_last_ts_24h
from everything as e
cross join as_of as a
left join aggregates as g on g.customer_id = e.customer_id
left join merchants_24h as m on m.customer_id = e.customer_id
