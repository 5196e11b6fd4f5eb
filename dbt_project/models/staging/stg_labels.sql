{#- post_hook analyze: fresh statistics for the models reading this one (stale ones after a big load
    turn the customer history lookups into full scans). The partial index of the fraud labels (dbt's
    `indexes` config has no `where`) lets the merchant fraud windows read the 1 % of labels that say
    fraud instead of every label (macro merchant_features_sql). -#}
{{ config(
    materialized='table',
    post_hook=[
        'create index on {{ this }} (transaction_id, label_ts) where is_fraud',
        'analyze {{ this }}',
    ],
    indexes=[{'columns': ['transaction_id', 'label_ts']}],
) }}

{#- Label events, typed and deduplicated. A transaction can have several label events over time (for
    example `confirmed` then `chargeback`); consumers pick the newest one known at their cut-off. -#}
with ranked as (
    select
        transaction_id::text as transaction_id,
        is_fraud::boolean as is_fraud,
        label_ts::timestamptz as label_ts,
        lower(label_source)::text as label_source,
        loaded_at::timestamptz as loaded_at,
        row_number() over (
            partition by transaction_id, label_ts, lower(label_source) order by loaded_at desc
        ) as rn
    from {{ source('raw', 'labels') }}
)

select transaction_id, is_fraud, label_ts, label_source, loaded_at
from ranked
where rn = 1
