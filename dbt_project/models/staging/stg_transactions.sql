{#- post_hook analyze: fresh statistics for the models reading this one (stale ones after a big load
    turn the customer history lookups into full scans). -#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='transaction_id',
    on_schema_change='fail',
    pre_hook="{{ delete_window('event_ts', source('raw', 'transactions')) }}",
    post_hook='analyze {{ this }}',
    indexes=[
        {'columns': ['transaction_id'], 'unique': True},
        {'columns': ['customer_id', 'event_ts', 'merchant_id']},
        {'columns': ['customer_id', 'merchant_id', 'event_ts']},
        {'columns': ['event_ts']},
    ],
) }}

{#- Typed and deduplicated transactions: the newest load of each transaction_id wins. -#}
with source as (
    select *
    from {{ source('raw', 'transactions') }}
    where event_ts >= {{ window_lo(source('raw', 'transactions')) }}
      and event_ts < {{ window_hi() }}
),

ranked as (
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
        loaded_at::timestamptz as loaded_at,
        row_number() over (partition by transaction_id order by loaded_at desc, source desc) as rn
    from source
)

select
    transaction_id, event_ts, customer_id, merchant_id, merchant_category, amount, currency, channel,
    country, source_partition, loaded_at
from ranked
where rn = 1
