"""Queue listing at depth: does paging stay fast with 100,000 messages queued?

`python bench/queue_list.py [--messages 100000]` builds a throwaway database (SQLite in a
temp directory, or `DATABASE_URL` if it names PostgreSQL: a `bench_queue` database is
created and dropped), fills it with queued messages, and times the API's message list:
the first page, a page reached by following the cursor deep into the list, and filtered
lists, against the same requests on a 1,000-message baseline in the same run. Prints one
table of medians and the ratio to the baseline (about 1 means paging does not slow down
as the queue grows).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(database_dir: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
    os.environ["MAILADMIN_DATA_DIR"] = str(database_dir)
    # The product ships no key (make run generates them): this run makes its own.
    from smtpworker.core import contract

    for name in (contract.SECRET_KEY_ENV, contract.ENCRYPTION_KEY_ENV):
        if not contract.env_given(name):
            os.environ[name] = f"bench-{secrets.token_urlsafe(32)}"
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        base = url.rsplit("/", 1)[0]
        import psycopg

        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_queue")
            conn.execute("CREATE DATABASE bench_queue")
        os.environ["DATABASE_URL"] = f"{base}/bench_queue"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{database_dir / 'bench.sqlite3'}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(count: int, start: int) -> None:
    from django.utils import timezone

    from mailadmin.models import Message, Recipient

    now = timezone.now()
    batch = 5000
    for first in range(start, start + count, batch):
        rows = [
            Message(
                queue_id=f"B{n:023d}",
                server_name="Relay",
                sender=f"user{n % 977}@corp.test",
                subject=f"Report {n}",
                size=1024,
                received_at=now - timedelta(seconds=n),
                state="retry" if n % 3 else "queued",
            )
            for n in range(first, min(first + batch, start + count))
        ]
        Message.objects.bulk_create(rows)
        created = Message.objects.filter(queue_id__in=[m.queue_id for m in rows])
        Recipient.objects.bulk_create(
            Recipient(
                message=m,
                address=f"to{m.pk % 50}@dest{m.pk % 20}.test",
                domain=f"dest{m.pk % 20}.test",
                next_hop=f"dest{m.pk % 20}.test",
            )
            for m in created
        )


def analyze() -> None:
    """Refresh planner statistics, as autovacuum would soon after a bulk load."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def timed(client: object, url: str, repeat: int = 7) -> tuple[float, dict[str, object]]:
    samples = []
    body: dict[str, object] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content[:200]
        body = response.json()
    return statistics.median(samples) * 1000, body


def deep_cursor(client: object, pages: int) -> str:
    url = "/api/v1/messages/?limit=50"
    for _ in range(pages):
        body = client.get(url).json()  # type: ignore[attr-defined]
        if not body.get("next"):
            break
        url = str(body["next"])
    return url


def measure(client: object, deep_pages: int) -> dict[str, float]:
    deep = deep_cursor(client, deep_pages)
    return {
        "first page": timed(client, "/api/v1/messages/?limit=50")[0],
        f"page {deep_pages + 1} (cursor)": timed(client, deep)[0],
        "filter sender": timed(client, "/api/v1/messages/?sender=user13@&limit=50")[0],
        "filter queue": timed(client, "/api/v1/messages/?queue=dest7.test&limit=50")[0],
        "filter subject": timed(client, "/api/v1/messages/?subject=Report%2099&limit=50")[0],
        "queues by next hop": timed(client, "/api/v1/queues/", repeat=3)[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--deep-pages", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        setup(Path(tmp))
        from django.contrib.auth.models import User
        from rest_framework.test import APIClient

        client = APIClient()
        client.force_authenticate(User.objects.create_superuser("bench", "b@b.test", "x"))
        fill(1000, 0)
        analyze()
        baseline = measure(client, args.deep_pages)
        started = time.perf_counter()
        fill(args.messages - 1000, 1000)
        filled = time.perf_counter() - started
        analyze()
        large = measure(client, args.deep_pages)
    print(
        f"queue listing, {args.messages:,} messages queued (filled in {filled:.0f} s); medians in ms"
    )
    print(f"| request | 1,000 messages | {args.messages:,} messages | ratio |")
    print("|---|---|---|---|")
    for name, small in baseline.items():
        big = large[name]
        print(f"| {name} | {small:.1f} | {big:.1f} | {big / small:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
