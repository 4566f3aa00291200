"""Delivery services: taking spooled mail in, delivery runs, reports, the sweep, counters."""
