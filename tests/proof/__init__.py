"""Proof suites (issue 6): attacks and abuse the product must survive."""
