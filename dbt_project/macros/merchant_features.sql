{#-
  Merchant features for a spine of (merchant_id, feature_date): as of the START of feature_date (UTC),
  from transactions strictly before it and from labels whose label_ts is strictly before it (label lag:
  a chargeback known tomorrow is not used today). Shared by merchant_features and merchant_features_latest
  so that offline and online definitions cannot drift apart.
-#}
{% macro merchant_features_sql(spine_sql, stg_transactions, stg_labels, merchant_daily) %}
with spine as (
    select merchant_id, feature_date, (feature_date::timestamp at time zone 'UTC') as feature_ts
    from ({{ spine_sql }}) as s
),

daily as (
    -- one row per merchant and day of activity (model merchant_daily); the rolling windows sum these
    select d.merchant_id, d.txn_date, d.txn_count, d.amount_sum
    from {{ merchant_daily }} as d
    where d.merchant_id in (select merchant_id from spine)
      and d.txn_date >= (select min(feature_date) from spine) - 30
      and d.txn_date < (select max(feature_date) from spine)
),

label_events as (
    -- each label event with the time it was superseded by the next label of the same transaction
    select
        l.transaction_id,
        l.is_fraud,
        l.label_ts,
        lead(l.label_ts) over (partition by l.transaction_id order by l.label_ts, l.label_source) as next_label_ts
    from {{ stg_labels }} as l
),

fraud_labels as (
    select t.merchant_id, (t.event_ts at time zone 'UTC')::date as txn_date, e.label_ts, e.next_label_ts
    from label_events as e
    join {{ stg_transactions }} as t on t.transaction_id = e.transaction_id
    where e.is_fraud
      and t.merchant_id in (select merchant_id from spine)
      and t.event_ts >= (select min(feature_ts) from spine) - interval '30 days'
      and t.event_ts < (select max(feature_ts) from spine)
),

windows as (
    select
        s.merchant_id,
        s.feature_date,
        sum(d.txn_count) filter (where d.txn_date >= s.feature_date - 7) as txn_count_7d,
        sum(d.amount_sum) filter (where d.txn_date >= s.feature_date - 7) as amount_sum_7d,
        sum(d.txn_count) as txn_count_30d
    from spine as s
    join daily as d
        on d.merchant_id = s.merchant_id
       and d.txn_date >= s.feature_date - 30 and d.txn_date < s.feature_date
    group by s.merchant_id, s.feature_date
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
left join windows as w on w.merchant_id = s.merchant_id and w.feature_date = s.feature_date
left join frauds as f on f.merchant_id = s.merchant_id and f.feature_date = s.feature_date
{% endmacro %}
