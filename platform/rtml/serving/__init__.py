"""The scoring service: BentoML's ``FraudScorer`` (``rtml.serving.service``) and what it is made of.

An edge, like ``rtml.defs``: it imports BentoML, and no core library imports it
(``tests/test_import_graph.py``).

    service.py         FraudScorer: the BentoML wiring (routes, start-up, shutdown)
    lifecycle.py       ModelSlot: a model version followed through a registry alias (load, poll, swap, unload)
    scoring.py         loading a version safely, the online read, the model rows, the model call
    shadow.py          the staged version scored beside production, off the request path
    sidecar.py         the worker's sidecar process: the prediction log's writer and the stream publisher
    metrics.py         the scorer's Prometheus metrics
    batching.py        the greedy micro-batcher
    breaker.py         the online read's circuit breaker
    http_guard.py      body limit and abandoned requests (ASGI middleware)
    schemas.py         the request and response models
    bento_manifest.py  which packaged model the bento declares
    bentoml_adapter.py the one use of BentoML's private API (its memory fix)
    package.py         ``python -m rtml.serving.package``: the production version into the model store
    bentofile.yaml     ``bentoml build`` of the service
"""
