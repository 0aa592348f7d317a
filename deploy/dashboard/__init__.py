"""The web dashboard: fleet, devices, models and rollouts from the telemetry store, with JSON twins.

``views`` computes what each page shows as plain dicts; ``app`` serves them as HTML (Jinja2
templates) and as JSON (the same dicts), plus ``/metrics`` for Prometheus; the pages poll their
JSON twin to update live. ``edgefleet dashboard`` (``edgefleet.deploy.dashboard_cli``) runs it.
"""
