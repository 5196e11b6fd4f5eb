{{ config(materialized='table') }}

{#-
  Labelled transactions joined point-in-time to their features, with the label AS KNOWN AT the
  training cut-off (var `training_cutoff`): label events with label_ts after the cut-off are ignored,
  and transactions after the cut-off are not included. Customer features are the transaction's own
  row of customer_features (strictly earlier data); merchant features are the row of the
  transaction's day (data before that day's start, labels known before it).
  var `training_include_unlabelled` (default false): also include transactions without a known label,
  as not fraud (is_labelled = false).
  Both feature views are LEFT joined: a transaction whose feature row is missing (a refresh that died
  half-way) keeps NULL features, and the not_null tests in _training.yml fail loudly instead of the row
  silently dropping out or training on NULL merchant features.
-#}
with cutoff as (
    select {{ training_cutoff() }} as cutoff_ts
),

known_labels as (
    select distinct on (l.transaction_id)
        l.transaction_id, l.is_fraud, l.label_ts, l.label_source
    from {{ ref('stg_labels') }} as l
    cross join cutoff as c
    where l.label_ts <= c.cutoff_ts
    order by l.transaction_id, l.label_ts desc, l.label_source
)

select
    t.transaction_id,
    t.event_ts,
    t.customer_id,
    t.merchant_id,
    t.merchant_category,
    t.amount::double precision as amount,
    t.currency,
    t.channel,
    t.country,
    cf.txn_count_1h,
    cf.amount_sum_1h::double precision as amount_sum_1h,
    cf.txn_count_24h,
    cf.amount_sum_24h::double precision as amount_sum_24h,
    cf.txn_count_7d,
    cf.amount_sum_7d::double precision as amount_sum_7d,
    cf.txn_count_30d,
    cf.amount_mean_30d,
    cf.amount_std_30d,
    cf.amount_zscore_30d,
    cf.distinct_merchants_24h,
    cf.seconds_since_prev_txn,
    cf.night_share_7d,
    cf.is_new_merchant,
    mf.merchant_txn_count_7d,
    mf.merchant_amount_avg_7d,
    mf.merchant_txn_count_30d,
    mf.merchant_fraud_count_30d,
    mf.merchant_fraud_rate_30d,
    coalesce(k.is_fraud, false) as is_fraud,
    k.transaction_id is not null as is_labelled,
    k.label_ts,
    k.label_source,
    c.cutoff_ts as training_cutoff
from {{ ref('stg_transactions') }} as t
cross join cutoff as c
left join {{ ref('customer_features') }} as cf on cf.transaction_id = t.transaction_id
left join {{ ref('merchant_features') }} as mf
    on mf.merchant_id = t.merchant_id and mf.feature_date = (t.event_ts at time zone 'UTC')::date
{% if var('training_include_unlabelled', false) %}left{% endif %} join known_labels as k on k.transaction_id = t.transaction_id
where t.event_ts <= c.cutoff_ts
