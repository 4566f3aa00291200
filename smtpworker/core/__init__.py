"""The Django-free core both halves share: grammar, configuration, spool, secrets, logs.

Nothing here imports Django, ``mailadmin`` or the other ``smtpworker`` packages; the web
process, Celery and the SMTP daemon all import it.
"""
