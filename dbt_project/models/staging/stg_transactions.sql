{#- post_hook vacuum analyze, after the commit (VACUUM cannot run in a transaction): fresh statistics for
    the models reading this one (stale ones after a big load turn the customer history lookups into full
    scans), and a visibility map, so those lookups are index-only scans instead of a heap fetch per row
    (12 M of them in a full build of `customer_features` over 1 M transactions). -#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='transaction_id',
    on_schema_change='fail',
    pre_hook="{{ delete_window('event_ts', source('raw', 'transactions')) }}",
    post_hook={'sql': 'vacuum analyze {{ this }}', 'transaction': false},
    indexes=[
        {'columns': ['transaction_id'], 'unique': True},
        {'columns': ['customer_id', 'event_ts', 'merchant_id']},
        {'columns': ['customer_id', 'merchant_id', 'event_ts']},
        {'columns': ['event_ts']},
    ],
) }}

{#- Typed transactions. No deduplication: `raw.transactions` keys on transaction_id (rtml.ingest.tables),
    so the loader has already decided which delivery of a transaction is kept (a re-sent one is
    quarantined as `transaction_id_duplicate`, a re-loaded partition replaces its rows); the `unique`
    test below guards it, and a row_number() over 1 M ids cost 0.7 s of every full build. -#}
select
    transaction_id::text as transaction_id,
    event_ts::timestamptz as event_ts,
    customer_id::text as customer_id,
    merchant_id::text as merchant_id,
    merchant_category::text as merchant_category,
    round(amount::numeric, 2)::numeric(12, 2) as amount,
    upper(currency)::char(3) as currency,
    lower(channel)::text as channel,
    upper(country)::text as country,
    source::text as source_partition,
    loaded_at::timestamptz as loaded_at
from {{ source('raw', 'transactions') }}
where event_ts >= {{ window_lo(source('raw', 'transactions')) }}
  and event_ts < {{ window_hi() }}
