"""Monitoring: the prediction log (``monitoring.predictions``) and, later, drift and live performance."""
