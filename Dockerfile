# One image for every mailadmin process: web (gunicorn), worker and beat (Celery), the
# one-shot migrate, and the SMTP worker. docker-compose.yml picks the process by `command`.
#
# Every requirement ships as a binary wheel (psycopg[binary], cryptography, PyYAML...), so
# no compiler is needed and a single stage is already as small as a multi-stage build.
# Nothing is fetched at run time: static files are collected here and served by whitenoise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILADMIN_DATA_DIR=/data

# A fixed uid, so secrets and bind mounts can be given to it on the host (chown 10001).
RUN groupadd --system --gid 10001 mailadmin \
    && useradd --system --uid 10001 --gid mailadmin --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin mailadmin

WORKDIR /app

# Runtime dependencies only (requirements-dev.txt is for make lint / make test). The
# imports then fail the build, rather than the containers, if a runtime dependency is
# missing (kombu's Redis transport needs `packaging`, which only its [redis] extra brings).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && python -c "import celery, gunicorn, kombu.transport.redis, psycopg, aiosmtpd"

# The code stays owned by root: the service user can read it but not change it.
COPY . .

# collectstatic imports the settings, which need a SECRET_KEY and a database URL; both are
# throwaway values that exist only during this step. /data is created owned by the service
# user, so a fresh named volume mounted there (the spool, mail roots, beat's schedule)
# starts out writable by it.
RUN SECRET_KEY=collectstatic-only-not-a-secret \
    DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 \
    python manage.py collectstatic --noinput --verbosity 0 \
    && rm -f /tmp/collectstatic.sqlite3 \
    && install -d -o mailadmin -g mailadmin -m 0750 /data

USER 10001:10001

# 8000: the console and API (gunicorn). 25 and 587: SMTP, as the virtual servers bind them.
EXPOSE 8000 25 587

# /dev/shm for gunicorn's worker heartbeat files: /tmp on overlayfs can stall them. No
# control socket: it would go to $HOME (/app), which the service user cannot write.
CMD ["gunicorn", "mailadmin.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", \
     "--graceful-timeout", "8", "--worker-tmp-dir", "/dev/shm", "--no-control-socket", \
     "--access-logfile", "-"]
