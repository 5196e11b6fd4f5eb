{#- The customer's history aggregates over the 30 days before `as_of` (an SQL expression), from the rows
    aliased `h` (already restricted to [as_of - 30 days, as_of)). One definition for the incremental
    `customer_features` (as_of = the transaction's time) and `customer_features_latest` (as_of = just
    after the newest event), so offline and online features cannot drift apart. The full build of
    `customer_features` computes the same windows with window functions (equality is tested). -#}
{% macro customer_aggregates(h, as_of) -%}
    count(*) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '1 hour') as txn_count_1h,
    coalesce(sum({{ h }}.amount) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '1 hour'), 0)
        as amount_sum_1h,
    count(*) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '24 hours') as txn_count_24h,
    coalesce(sum({{ h }}.amount) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '24 hours'), 0)
        as amount_sum_24h,
    count(*) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '7 days') as txn_count_7d,
    coalesce(sum({{ h }}.amount) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '7 days'), 0)
        as amount_sum_7d,
    avg(case when extract(hour from {{ h }}.event_ts at time zone 'UTC') < 6 then 1 else 0 end)
        filter (where {{ h }}.event_ts >= {{ as_of }} - interval '7 days') as night_share_7d,
    count(*) as txn_count_30d,
    avg({{ h }}.amount) as amount_mean_30d,
    stddev_samp({{ h }}.amount) as amount_std_30d
{%- endmacro %}
