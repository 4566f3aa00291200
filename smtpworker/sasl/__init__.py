"""SASL for both sides of SMTP AUTH (RFC 4954), without I/O of its own.

- ``server``: the SMTP daemon's mechanisms (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256), which
  see the session only through the ``AuthSession`` protocol (send a challenge, read the
  answer; check a password; the accounts' verifiers);
- ``client``: the outbound connection's mechanisms (``Mechanism``: start, step, complete);
- ``scram``: both SCRAM-SHA-256 exchanges and the message arithmetic they share.

Layering: ``core`` <- ``sasl`` <- ``inbound`` | ``outbound`` (an import-linter contract).
The stored verifiers and the primitives they are made of (SASLprep, SCRAM's key
derivation, HMAC-SHA-256, base64 text, CRAM-MD5 contexts) are the core's
(``smtpworker.core.credentials``): the web side makes them when it saves a user.
"""
