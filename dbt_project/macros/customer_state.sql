{#- The online store's customer state beyond `customer_aggregates`, one definition for
    `customer_features_latest` (a GROUP BY over every customer) and the training-serving skew check
    (`rtml.monitoring.skew`, one customer at a time, rendered from the manifest): -#}

{#- distinct merchants of the 24 hours before `as_of`, from the rows aliased `h` (restricted as for
    `customer_aggregates`) -#}
{% macro customer_recent_merchants(h, as_of) -%}
    count(distinct {{ h }}.merchant_id) filter (where {{ h }}.event_ts >= {{ as_of }} - interval '24 hours')
        as distinct_merchants_24h
{%- endmacro %}

{#- the customer's whole history before the state's time, from the rows aliased `h`: the newest
    transaction (for `seconds_since_prev_txn`) and every merchant seen (for `is_new_merchant`) -#}
{% macro customer_history(h) -%}
    max({{ h }}.event_ts) as last_txn_ts,
    array_agg(distinct {{ h }}.merchant_id order by {{ h }}.merchant_id) as known_merchant_ids
{%- endmacro %}

{#- the windowed state columns as the online store reads them, from `r` (`customer_aggregates` and
    `customer_recent_merchants`; NULL when the customer has no row in the 30 days) -#}
{% macro customer_state_columns(r) -%}
    coalesce({{ r }}.txn_count_1h, 0)::integer as txn_count_1h,
    coalesce({{ r }}.amount_sum_1h, 0)::numeric(14, 2) as amount_sum_1h,
    coalesce({{ r }}.txn_count_24h, 0)::integer as txn_count_24h,
    coalesce({{ r }}.amount_sum_24h, 0)::numeric(14, 2) as amount_sum_24h,
    coalesce({{ r }}.txn_count_7d, 0)::integer as txn_count_7d,
    coalesce({{ r }}.amount_sum_7d, 0)::numeric(14, 2) as amount_sum_7d,
    coalesce({{ r }}.txn_count_30d, 0)::integer as txn_count_30d,
    {{ r }}.amount_mean_30d::double precision as amount_mean_30d,
    {{ r }}.amount_std_30d::double precision as amount_std_30d,
    coalesce({{ r }}.distinct_merchants_24h, 0)::integer as distinct_merchants_24h,
    {{ r }}.night_share_7d::double precision as night_share_7d
{%- endmacro %}
