"""Structured logs: one JSON object per line from the SMTP worker, Django and Celery."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpworker.core import jsonlog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (configure() replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.jsonlog.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_base_fields_and_every_extra_field() -> None:
    logger, stream = capture(jsonlog.JsonFormatter({"node": "n1"}))
    logger.info(
        "accepted %s", "18F2A", extra={"queue_id": "18F2A", "server": "Relay", "size": 1234}
    )
    (line,) = lines(stream)
    assert line["level"] == "INFO" and line["message"] == "accepted 18F2A"
    assert str(line["logger"]).startswith("test.jsonlog.")
    assert str(line["time"]).endswith("Z") and "T" in str(line["time"])
    assert {k: line[k] for k in ("queue_id", "server", "size", "node")} == {
        "queue_id": "18F2A",
        "server": "Relay",
        "size": 1234,
        "node": "n1",
    }


def test_every_record_is_one_valid_line_whatever_it_holds() -> None:
    logger, stream = capture(jsonlog.JsonFormatter())
    logger.warning(
        'two\nlines \u2028 and "quotes" and \udcff', extra={"obj": object(), "tags": {"a", "b"}}
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed", extra={"queue_id": "Q1"})
    first, second = stream.getvalue().splitlines()
    assert json.loads(first)["message"].startswith("two\nlines \u2028")
    assert json.loads(first)["obj"].startswith("<object object")
    assert sorted(json.loads(first)["tags"]) == ["a", "b"]
    failed = json.loads(second)
    assert failed["queue_id"] == "Q1" and failed["level"] == "ERROR"
    assert "RuntimeError: boom" in failed["exception"]


def test_extra_fields_cannot_replace_the_base_fields() -> None:
    logger, stream = capture(jsonlog.JsonFormatter({"level": "static"}))
    logger.info("hello", extra={"time": "forged", "logger": "forged"})
    (line,) = lines(stream)
    assert line["level"] == "INFO" and line["time"] != "forged" and line["logger"] != "forged"


def test_the_adapter_carries_its_context_and_the_call_adds_to_it() -> None:
    logger, stream = capture(jsonlog.JsonFormatter())
    session = jsonlog.ContextAdapter(logger, {"server": "Relay", "client_ip": "10.0.0.5"})
    session = session.bind(session="abc123")
    session.info("connected")
    session.bind(queue_id="Q2").info("accepted", extra={"size": 10, "server": "Other"})
    connected, accepted = lines(stream)
    assert connected["server"] == "Relay" and connected["session"] == "abc123"
    assert "queue_id" not in connected
    assert accepted["queue_id"] == "Q2" and accepted["size"] == 10
    assert accepted["server"] == "Other"  # the call's own extra wins
    assert session.fields == {"server": "Relay", "client_ip": "10.0.0.5", "session": "abc123"}


def test_the_plain_format_is_unchanged_but_shows_the_extra_fields() -> None:
    logger, stream = capture(jsonlog.PlainFormatter())
    logger.info("plain")
    logger.info("accepted", extra={"queue_id": "Q3", "sender": "a b", "obj": object()})
    plain, accepted = stream.getvalue().splitlines()
    assert plain.endswith(" INFO " + logger.name + ": plain")
    assert accepted.endswith(': accepted queue_id=Q3 sender="a b"')


def test_configure_replaces_the_root_handlers(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonlog.configure("INFO", "json", node="n1.0", show_node=True)
    jsonlog.configure("debug", "json", node="n1.1", show_node=True)  # a forked child again
    assert len(root_logger.handlers) == 1 and root_logger.level == logging.DEBUG
    logging.getLogger("smtpworker.inbound.runtime").info("listening", extra={"server": "Relay"})
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert line["node"] == "n1.1" and line["server"] == "Relay"
    jsonlog.configure("INFO", "plain", node="n1.2", show_node=True)
    logging.getLogger("smtpworker.inbound.runtime").info("plain")
    assert capsys.readouterr().err.rstrip().endswith("INFO n1.2 smtpworker.inbound.runtime: plain")
    with pytest.raises(ValueError, match="xml"):
        jsonlog.configure("INFO", "xml")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_worker_process_logs_json_lines_on_stderr() -> None:
    code = (
        "import logging\n"
        "from smtpworker.core import jsonlog\n"
        "jsonlog.configure('INFO', 'json', node='n1')\n"
        "log = jsonlog.ContextAdapter(logging.getLogger('smtpworker.inbound.handler'),\n"
        "    {'server': 'Relay', 'client_ip': '10.0.0.5', 'session': 's1'})\n"
        "log.debug('not shown')\n"
        "log.bind(queue_id='Q4').info('accepted Q4')\n"
    )
    result = run_python(code)
    (line,) = json_lines(result.stderr)
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "logger": "smtpworker.inbound.handler",
        "message": "accepted Q4",
        "node": "n1",
        "server": "Relay",
        "client_ip": "10.0.0.5",
        "session": "s1",
        "queue_id": "Q4",
    }


DJANGO_AND_CELERY = """
import logging
import django
django.setup()
from mailadmin.celery import app

logging.getLogger("mailadmin.services.delivery.runs").info(
    "delivered", extra={"queue_id": "Q5", "server": "Relay"})
logging.getLogger("django.request").warning("Not Found: /x", extra={"status_code": 404})

# What a Celery worker or beat does when it starts: JSON mode keeps Django's LOGGING.
app.log.setup(loglevel="INFO")
logging.getLogger("celery.worker").info("ready")

@app.task(name="test.jsonlog")
def task():
    logging.getLogger("mailadmin.tasks").info("in a task", extra={"queue_id": "Q6"})

task.apply()
"""


def test_django_and_celery_log_json_lines_with_log_format_json() -> None:
    result = run_python(DJANGO_AND_CELERY, LOG_FORMAT="json", LOG_LEVEL="INFO")
    lines = json_lines(result.stderr)
    by_message = {str(line["message"]): line for line in lines}
    delivered = by_message["delivered"]
    assert delivered["logger"] == "mailadmin.services.delivery.runs"
    assert delivered["queue_id"] == "Q5" and delivered["server"] == "Relay"
    assert by_message["Not Found: /x"]["status_code"] == 404
    assert by_message["ready"]["logger"] == "celery.worker"
    in_task = by_message["in a task"]
    assert in_task["queue_id"] == "Q6" and in_task["task_name"] == "test.jsonlog"
    assert in_task["task_id"]


def test_the_plain_default_keeps_celerys_own_format() -> None:
    result = run_python(DJANGO_AND_CELERY, LOG_FORMAT="plain", LOG_LEVEL="INFO")
    delivered = [line for line in result.stderr.splitlines() if ": delivered" in line]
    assert delivered and delivered[0].endswith(
        "INFO mailadmin.services.delivery.runs: delivered queue_id=Q5 server=Relay"
    )
    assert any("INFO/MainProcess] ready" in line for line in result.stderr.splitlines())


def test_a_bad_log_format_stops_django_at_start_up() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        run_python("import django; django.setup()", LOG_FORMAT="xml")
    assert "LOG_FORMAT='xml' is not plain or json" in failure.value.stderr
