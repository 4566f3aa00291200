"""The inbound SMTP daemon (``python -m smtpworker``): listeners, sessions, policy, pickup.

Runs only in the SMTP worker process; imports the core and the SASL package, never the
outbound engine, Django or ``mailadmin`` (the console's relay tester imports ``policy``).
"""
