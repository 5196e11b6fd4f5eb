{{ config(materialized='table', indexes=[{'columns': ['customer_id'], 'unique': True}]) }}

{#-
  The online store's customer state: per customer, exactly what `customer_features` would hold for a
  NEW transaction of that customer arriving at `as_of_ts` = newest event in the data + 1 microsecond.
  So the state INCLUDES the customer's latest transaction (windows are [as_of_ts - w, as_of_ts)).
  Request-dependent features cannot be precomputed; the scorer derives them from stored state:
    seconds_since_prev_txn = request_ts - last_txn_ts
    amount_zscore_30d      = (amount - amount_mean_30d) / amount_std_30d   (null when std is 0/null)
    is_new_merchant        = merchant_id not in known_merchant_ids
  Windowed counts are as of `as_of_ts`; they are refreshed with every feature run (staleness = time
  since `as_of_ts`, which the online store exposes).
-#}
{%- set stg = ref('stg_transactions') %}

with as_of as (
    select coalesce(max(event_ts), now()) + interval '1 microsecond' as as_of_ts from {{ stg }}
),

recent as (
    select
        t.customer_id,
        {{ customer_aggregates('t', 'a.as_of_ts') }},
        {{ customer_recent_merchants('t', 'a.as_of_ts') }}
    from {{ stg }} as t
    cross join as_of as a
    where t.event_ts >= a.as_of_ts - interval '30 days'
    group by t.customer_id
),

everything as (
    select t.customer_id, {{ customer_history('t') }}
    from {{ stg }} as t
    group by t.customer_id
)

select
    e.customer_id,
    a.as_of_ts,
    e.last_txn_ts,
    {{ customer_state_columns('r') }},
    e.known_merchant_ids
from everything as e
cross join as_of as a
left join recent as r on r.customer_id = e.customer_id
