"""Django settings for mailadmin.

Everything that differs between machines comes from the environment (12-factor). Each
``FOO`` may instead be given as ``FOO_FILE`` naming a file that holds the value, which is
how container secrets are mounted. Bad values raise ``ImproperlyConfigured`` at start-up
rather than surfacing later as odd behaviour.

SMTP behaviour is configuration data (models), never settings.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from smtpworker.core import contract, safefile

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str) -> str:
    """Return ``$name``, or the contents of the file named by ``$name_FILE``, or ``default``
    (:func:`smtpworker.core.contract.env`, as the SMTP worker reads them)."""
    try:
        return contract.env(name, default)
    except contract.EnvFileError as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def envbool(name: str, default: str) -> bool:
    value = envstr(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def envint(name: str, default: str) -> int:
    value = envstr(name, default)
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from exc


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", "false")
# No default: a key in the repository would be public. `make run` generates both keys
# once into var/ and passes them to every process; a deployment mounts them as *_FILE.
# Left empty, Django refuses to use it, and the checks in mailadmin.checks (run by
# `migrate`, the web process and Celery at start) refuse to start without DEBUG.
SECRET_KEY = envstr(contract.SECRET_KEY_ENV, "")
# Encrypts secrets at rest (TLS keys, smart-host passwords, CRAM-MD5 contexts). The SMTP
# worker needs the same value to decrypt them from the published snapshot. Falls back to
# SECRET_KEY so a single-machine install needs only one secret.
MAILADMIN_ENCRYPTION_KEY = contract.encryption_key_setting(lambda name: envstr(name, ""))[1]
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

# Where mail roots (Queue/ Pickup/ Drop/ Badmail/), logs and the worker's last-known-good
# snapshot live unless a virtual server names its own home directory.
MAILADMIN_DATA_DIR = Path(envstr("MAILADMIN_DATA_DIR", str(BASE_DIR / "var"))).resolve()
MAILADMIN_MAILROOT = Path(
    envstr("MAILADMIN_MAILROOT", str(MAILADMIN_DATA_DIR / "mailroot"))
).resolve()
# 0700: it holds the database, mail, generated secrets and the workers' cached configuration.
safefile.private_directory(MAILADMIN_DATA_DIR)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "mailadmin",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Above the session and CSRF middleware: it sees the cookies they set on the way out.
    "mailadmin.middleware.BrowserSecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "mailadmin.middleware.NullCharactersMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it turns a login that axes refused into the lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "mailadmin.urls"
WSGI_APPLICATION = "mailadmin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{MAILADMIN_DATA_DIR / 'mailadmin.sqlite3'}")
# PostgreSQL starts a server process per connection: long-lived processes (Celery workers
# run thousands of tasks) keep theirs for a minute, checked before reuse so a restarted
# server costs one failed check, not a failed task.
_POSTGRES = _DATABASE_URL.startswith(("postgres://", "postgresql://", "pgsql://"))
DATABASES = {
    "default": dj_database_url.parse(
        _DATABASE_URL,
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", "60" if _POSTGRES else "0"),
        conn_health_checks=_POSTGRES,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default must work on a fresh clone, where var/ does not exist yet.
    # Owner only: the database holds password hashes and sealed secrets (SQLite gives its
    # -wal and -shm files the database file's mode).
    # Links an administrator made above the file are theirs to make (hence resolve()).
    if str(DATABASES["default"]["NAME"]) not in ("", ":memory:"):
        _sqlite = Path(DATABASES["default"]["NAME"])
        safefile.private_file(safefile.private_directory(_sqlite.parent.resolve()) / _sqlite.name)
    # WAL lets the web process, Celery and beat read while one of them writes.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # A file, not memory, so the Celery and SMTP worker processes that end-to-end tests
    # start can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(MAILADMIN_DATA_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"]["OPTIONS"]["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REDIS_URL = envstr("REDIS_URL", contract.DEFAULT_REDIS_URL)

# -- Browsers: HTTPS, cookies, Content-Security-Policy --------------------------------
# Behind a reverse proxy that terminates TLS, name the header it sets to the original
# scheme (e.g. X-Forwarded-Proto); only then is a request taken as HTTPS on its word. Set
# it only behind a proxy that overwrites the header: a client could send it too.
_PROXY_SSL_HEADER = envstr("MAILADMIN_PROXY_SSL_HEADER", "").strip()
if _PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"),
        "https",
    )
# The client address for login rate limits: REMOTE_ADDR, or behind such a proxy the last
# address of this header (the one the proxy added, e.g. X-Forwarded-For).
MAILADMIN_PROXY_CLIENT_HEADER = envstr("MAILADMIN_PROXY_CLIENT_HEADER", "").strip()
# Sent on HTTPS answers only (SecurityMiddleware); 0 turns it off.
SECURE_HSTS_SECONDS = envint("MAILADMIN_HSTS_SECONDS", "31536000")
# The session and CSRF cookies get the Secure flag on answers to HTTPS requests
# (mailadmin.middleware.BrowserSecurityMiddleware), so `make run` over plain HTTP on
# loopback still works; true: always.
MAILADMIN_SECURE_COOKIES = envbool("MAILADMIN_SECURE_COOKIES", "false")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = MAILADMIN_SECURE_COOKIES
# Every answer's Content-Security-Policy: the console's pages, the admin and the API docs
# load scripts, styles and images from this site only, and run no inline code.
MAILADMIN_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

# -- Login rate limits (django-axes), counted in Redis for every web process ----------
# Failed logins on the console's login page, /admin/ and POST /api/v1/token/ are counted
# per client address and, separately, per account; at the limit, that address or account
# is refused for the cool-off time (429, the form says so), counted from its last failure.
# `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS` lift a lock early.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "axes": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mailadmin:axes",
    },
}
AUTHENTICATION_BACKENDS = [
    "mailadmin.lockout.LoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_CACHE = "axes"
AXES_FAILURE_LIMIT = envint("MAILADMIN_LOGIN_FAILURE_LIMIT", "5")
AXES_COOLOFF_TIME = timedelta(minutes=envint("MAILADMIN_LOGIN_COOLOFF_MINUTES", "15"))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
# Guesses while locked out do not extend the lock: its end stays predictable.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "mailadmin.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "mailadmin.lockout.client_address"
AXES_USERNAME_FORM_FIELD = "username"

# Celery is only the carrier: messages are acknowledged after the task ran, and a task's
# hard limit stays well below the broker's visibility time-out so a slow task is never
# handed to a second worker while the first still runs it.
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
# Celery's Django fix-up closes the database connections after every task unless this is
# set; mailadmin/celery.py recycles them as Django does per request (CONN_MAX_AGE).
CELERY_DB_REUSE_MAX = 1_000_000_000
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Seconds between re-publications of the current configuration to Redis, so a flushed
# or restarted Redis heals on its own (the database is the record, Redis only carries it).
MAILADMIN_CONFIG_REPUBLISH_SECONDS = envint("MAILADMIN_CONFIG_REPUBLISH_SECONDS", "10")
MAILADMIN_SWEEP_SECONDS = envint("MAILADMIN_SWEEP_SECONDS", "5")
MAILADMIN_SPOOL_SWEEP_SECONDS = envint("MAILADMIN_SPOOL_SWEEP_SECONDS", "30")
CELERY_BEAT_SCHEDULE = {
    "config-republish": {
        "task": "mailadmin.config_republish",
        "schedule": float(MAILADMIN_CONFIG_REPUBLISH_SECONDS),
    },
    "sweep-due": {"task": "mailadmin.sweep", "schedule": float(MAILADMIN_SWEEP_SECONDS)},
    "traffic-collect": {"task": "mailadmin.traffic_collect", "schedule": 30.0},
    "sweep-spools": {
        "task": "mailadmin.sweep",
        "schedule": float(MAILADMIN_SPOOL_SWEEP_SECONDS),
        "kwargs": {"spools": True},
    },
}
# Seconds in a "minute" of the delivery schedule (retry, delay, expiration). 60 in
# production; tests shorten it so a retry schedule plays out in seconds.
MAILADMIN_DELIVERY_MINUTE = float(envstr("MAILADMIN_DELIVERY_MINUTE", "60"))
# How long a delivery run may hold a message. A run killed with its worker gives the
# message back when this ends; the relay task's Celery time limits sit inside it, so a
# slow run is stopped before a second one could start.
MAILADMIN_DELIVERY_LEASE_SECONDS = envint("MAILADMIN_DELIVERY_LEASE_SECONDS", "360")
# Each outbound SMTP command waits at most this long (IIS's 10-minute time-out would
# outlive the Celery task limit above).
MAILADMIN_OUTBOUND_TIMEOUT_CAP = envint("MAILADMIN_OUTBOUND_TIMEOUT_CAP", "60")
# Our name in EHLO and reports for servers without an FQDN.
MAILADMIN_HOSTNAME = envstr("MAILADMIN_HOSTNAME", socket.getfqdn())
# The node this process belongs to (as ``python -m smtpworker --node``): a Celery worker
# consumes the delivery queue of its node, whose spool is on its disk, and reports it
# spools (NDRs, delay notices) are that node's.
MAILADMIN_NODE = envstr("MAILADMIN_NODE", socket.gethostname().split(".")[0])

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["mailadmin.api.permissions.IsAdminOrReadOnlyOperator"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mailadmin.exceptions.api_exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "mailadmin API",
    "DESCRIPTION": (
        "Configure IIS-style SMTP virtual servers: bindings, authentication, connection "
        "control, relay restrictions, domains, users, delivery; export and import the whole "
        "configuration as one document."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["mailadmin.api.permissions.IsAdminOrReadOnlyOperator"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ServerStateEnum": "mailadmin.models.servers.ServerState",
        "MessageStateEnum": "mailadmin.models.queue.MessageState",
        "QueueStateEnum": ["active", "ready", "retry", "suspended"],
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# LOG_FORMAT=json: one JSON object per line (time, level, logger, message and the extra
# fields such as queue_id, server, node, client_ip, session) from the web process and
# Celery, as from the SMTP worker (smtpworker.core.jsonlog). plain (the default) keeps the
# classic line, with the same extra fields appended as key=value.
LOG_FORMAT = envstr("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "mailadmin.jsonlog.PlainFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        },
        "json": {"()": "mailadmin.jsonlog.JsonFormatter"},
    },
    "filters": {"routine_at_debug": {"()": "mailadmin.jsonlog.RoutineAtDebug"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    # JSON: Django's own handlers (runserver's access lines, the DEBUG console) would write
    # plain lines beside ours, so those loggers go through the root handler alone.
    # django-axes says at INFO that each successful login cleared nothing; failures and
    # lockouts are WARNINGs and stay. Celery's per-task lines (received, succeeded) and
    # beat's "Sending due task" are at DEBUG: at INFO a relayed message writes one line
    # on each side, and periodic tasks none (failures keep their levels).
    "loggers": {
        "axes": {"level": "WARNING"},
        "celery.worker.strategy": {"filters": ["routine_at_debug"]},
        "celery.app.trace": {"filters": ["routine_at_debug"]},
        "celery.beat": {"filters": ["routine_at_debug"]},
        **(
            {
                "django": {"handlers": [], "level": "INFO", "propagate": True},
                "django.server": {"handlers": [], "level": "INFO", "propagate": True},
            }
            if LOG_FORMAT == "json"
            else {}
        ),
    },
}

# /metrics (Prometheus text format). Logged-in operators and administrators may always
# read it; besides them, a scraper needs either this token (Authorization: Bearer ...;
# empty: no token access) or an address in MAILADMIN_METRICS_ALLOW, a comma-separated
# list of IPs and networks (CIDR or IIS's 10.1.0.0/255.255.0.0) matched against the
# peer address (REMOTE_ADDR: behind a reverse proxy, that is the proxy).
MAILADMIN_METRICS_TOKEN = envstr("MAILADMIN_METRICS_TOKEN", "")


def _metrics_allow(entries: list[str]) -> list[str]:
    from smtpworker.core.grammar import GrammarError, parse_access_entry

    allowed = []
    for text in entries:
        try:
            entry = parse_access_entry(text)
        except GrammarError as exc:
            raise ImproperlyConfigured(f"MAILADMIN_METRICS_ALLOW: {exc}") from exc
        if entry.kind == "domain":
            raise ImproperlyConfigured(
                f"MAILADMIN_METRICS_ALLOW: {text!r} is a domain; list IPs and networks only"
            )
        allowed.append(entry.value)
    return allowed


MAILADMIN_METRICS_ALLOW = _metrics_allow(envlist("MAILADMIN_METRICS_ALLOW", ""))
# The delivery latency histogram covers the messages received this many hours back.
MAILADMIN_METRICS_LATENCY_HOURS = envint("MAILADMIN_METRICS_LATENCY_HOURS", "24")

# PBKDF2 rounds for SMTP user passwords (AUTH PLAIN/LOGIN); SCRAM gets 1/150 of it, at
# least 4096 (RFC 7677). Tests lower it to keep account creation fast.
MAILADMIN_PASSWORD_ITERATIONS = envint("MAILADMIN_PASSWORD_ITERATIONS", "600000")
