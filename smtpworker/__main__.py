"""``python -m smtpworker``: the inbound SMTP daemon (:mod:`smtpworker.inbound.main`)."""

from smtpworker.inbound.main import main

if __name__ == "__main__":
    main()
