"""Automation domain: what makes the pipeline run by itself.

* schedules (``schedules.py``): the hourly refresh (raw transactions → incremental features → online
  store) and the daily retraining;
* freshness checks (``checks.py``) on ``fraud_model``, ``transactions_raw`` and ``online_features``, and the
  sensor that evaluates them;
* sensors (``sensors.py``): a failed drift or model-freshness check requests the retraining job; a failed
  data-freshness check, a failed run, a retraining and a promotion notify (``rtml.monitoring.notify``); a
  promotion also builds the bento of the new production version.
"""
