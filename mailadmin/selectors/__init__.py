"""Reads: what the API, the console, the metrics and the tasks show or decide on.

``queues``: the message queue (queues by next hop, messages, traffic counters);
``nodes``: what the SMTP worker nodes report in Redis. Writes are services
(``mailadmin.services``); a selector changes nothing.
"""
