"""The outbound delivery engine: routing, the SMTP client and its pool, DSN reports.

Runs only inside Celery's delivery tasks (``mailadmin.services.delivery``); imports the
core and the SASL package, never the inbound daemon or Django.
"""
