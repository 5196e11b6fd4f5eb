{{ config(materialized='table', indexes=[{'columns': ['merchant_id'], 'unique': True}]) }}

{#- The online store's merchant state: for every known merchant, what `merchant_features` holds for the
    day of the newest event in the data (features as of that day's start, UTC) -- the row a transaction
    arriving now would join. Same SQL as merchant_features (macro merchant_features_sql). -#}
{%- set stg = ref('stg_transactions') %}
{%- set spine -%}
    select distinct t.merchant_id, (select (max(event_ts) at time zone 'UTC')::date from {{ stg }}) as feature_date
    from {{ stg }} as t
{%- endset %}

{{ merchant_features_sql(spine, stg, ref('stg_labels'), ref('merchant_daily')) }}
