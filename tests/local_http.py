"""``httpx.get`` / ``httpx.post`` / ``httpx.Client`` for the tests' local servers, with one SSL context.

httpx builds a client for every one-shot call, and with it an SSL context that loads the CA bundle
(about 27 ms of CPU), even for a plain ``http://`` URL: py-spy put 27 s of the ``make test`` workers'
CPU there (readiness polls, metric scrapes, Prometheus queries). These pass one context built once;
each call still has its own client and connection, as before.
"""

from __future__ import annotations

from typing import Any

import httpx

SSL_CONTEXT = httpx.create_ssl_context()


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, verify=SSL_CONTEXT, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=SSL_CONTEXT, **kwargs)


def client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(verify=SSL_CONTEXT, **kwargs)
