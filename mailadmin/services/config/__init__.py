"""Configuration services: every write to virtual servers, domains, users and secrets.

Each write runs in :func:`versions.config_transaction` and becomes a configuration
version published to the SMTP workers.
"""
