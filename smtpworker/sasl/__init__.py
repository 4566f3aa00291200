"""SASL for both sides of SMTP AUTH: the server's mechanisms and the client's."""
