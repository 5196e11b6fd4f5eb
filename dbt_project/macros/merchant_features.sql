{#-
  Merchant features for a spine of (merchant_id, feature_date): as of the START of feature_date (UTC),
  from transactions strictly before it and from labels whose label_ts is strictly before it (label lag:
  a chargeback known tomorrow is not used today). Shared by merchant_features and merchant_features_latest
  so that offline and online definitions cannot drift apart.

  `lo_ts` / `hi_ts` (SQL timestamptz expressions, optional): bounds with lo_ts <= every feature_ts < hi_ts.
  An incremental run passes its window's constants, so the planner knows how many rows the 30 days
  before the window hold; without them they come from the spine (a sub-select the planner cannot see).

  Why it is shaped like this (an hourly run after a four-week hole took 550 s here, docs/benchmarks.md):
  * The label lag needs, for each fraud label, when the next label of the same transaction superseded
    it. That was a window function (lead) over EVERY label ever loaded (3 M rows, 5.5 s, growing each
    day), evaluated before any filter, and re-evaluated per spine row when a misestimate chose a nested
    loop. Now the driver is the fraud labels only (partial index of stg_labels `where is_fraud`), kept to
    the spine's merchants and the window's 30 days, and the superseding label is a probe of the
    (transaction_id, label_ts) index per remaining fraud label.
  * The 7/30-day sums read merchant_daily per spine row through its unique (merchant_id, txn_date)
    index (lateral aggregate): at most 30 rows per merchant-day, whatever the estimates.
-#}
{% macro merchant_features_sql(spine_sql, stg_transactions, stg_labels, merchant_daily, lo_ts=none, hi_ts=none) %}
with spine as materialized (
    select merchant_id, feature_date, (feature_date::timestamp at time zone 'UTC') as feature_ts
    from ({{ spine_sql }}) as s
),

fraud_labels as materialized (
    -- fraud labels of the spine merchants' transactions of [lo - 30 days, hi), each with the time the next
    -- label of the same transaction (in (label_ts, label_source) order) superseded it, if any
    select
        t.merchant_id,
        (t.event_ts at time zone 'UTC')::date as txn_date,
        l.label_ts,
        (
            select min(n.label_ts)
            from {{ stg_labels }} as n
            where n.transaction_id = l.transaction_id
              and (n.label_ts, n.label_source) > (l.label_ts, l.label_source)
        ) as next_label_ts
    from {{ stg_labels }} as l
    join {{ stg_transactions }} as t on t.transaction_id = l.transaction_id
    where l.is_fraud
      and l.label_ts < {{ hi_ts if hi_ts is not none else '(select max(feature_ts) from spine)' }}
      and t.event_ts >= {{ lo_ts if lo_ts is not none else '(select min(feature_ts) from spine)' }} - interval '30 days'
      and t.event_ts < {{ hi_ts if hi_ts is not none else '(select max(feature_ts) from spine)' }}
      and t.merchant_id in (select merchant_id from spine)
),

frauds as (
    -- fraud as known at feature_ts: the newest label known before it says fraud
    select s.merchant_id, s.feature_date, count(*) as fraud_count_30d
    from spine as s
    join fraud_labels as fl
        on fl.merchant_id = s.merchant_id
       and fl.txn_date >= s.feature_date - 30 and fl.txn_date < s.feature_date
       and fl.label_ts < s.feature_ts
       and (fl.next_label_ts is null or fl.next_label_ts >= s.feature_ts)
    group by s.merchant_id, s.feature_date
)

select
    s.merchant_id,
    s.feature_date,
    s.feature_ts,
    coalesce(w.txn_count_7d, 0)::integer as merchant_txn_count_7d,
    (w.amount_sum_7d / nullif(w.txn_count_7d, 0))::double precision as merchant_amount_avg_7d,
    coalesce(w.txn_count_30d, 0)::integer as merchant_txn_count_30d,
    coalesce(f.fraud_count_30d, 0)::integer as merchant_fraud_count_30d,
    (coalesce(f.fraud_count_30d, 0)::double precision / nullif(w.txn_count_30d, 0)) as merchant_fraud_rate_30d
from spine as s
cross join lateral (
    -- the merchant's days of activity in the 30 days before feature_date (model merchant_daily)
    select
        sum(d.txn_count) filter (where d.txn_date >= s.feature_date - 7) as txn_count_7d,
        sum(d.amount_sum) filter (where d.txn_date >= s.feature_date - 7) as amount_sum_7d,
        sum(d.txn_count) as txn_count_30d
    from {{ merchant_daily }} as d
    where d.merchant_id = s.merchant_id
      and d.txn_date >= s.feature_date - 30 and d.txn_date < s.feature_date
) as w
left join frauds as f on f.merchant_id = s.merchant_id and f.feature_date = s.feature_date
{% endmacro %}
