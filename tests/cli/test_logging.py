"""drkit's logger as the CLI sets it up: levels, context, both formats, no secrets."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator

import pytest

from drkit import redact
from drkit.logs import LogTo, context, debug, get_logger, setup, warn


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    yield
    logger = get_logger()  # as before: no handler, records go up to the root logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    redact.forget_all()


def test_off_a_terminal_each_line_has_time_level_host_and_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup(logging.INFO, tty=False)
    log = LogTo()
    with context(host="web"):
        log("web: starting")
        with context(source="db"):
            log("warning: pg_dump said something")
            warn(log, "second")
        log("error: it broke")
    log("no host here")
    out, err = capsys.readouterr()
    assert out == ""  # never stdout
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    lines = err.splitlines()
    assert [re.sub(stamp, "T", ln) for ln in lines] == [
        "T host=web info: web: starting",
        "T host=web source=db warning: pg_dump said something",
        "T host=web source=db warning: second",
        "T host=web error: it broke",
        "T info: no host here",
    ]


def test_on_a_terminal_lines_stay_short(capsys: pytest.CaptureFixture[str]) -> None:
    setup(logging.INFO, tty=True)
    log = LogTo()
    with context(host="web", source="db"):
        log("web: db (postgres) ...")
        warn(log, "slow")
    assert capsys.readouterr().err.splitlines() == ["web: db (postgres) ...", "warning: slow"]


def test_quiet_keeps_warnings_and_errors_verbose_adds_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup(logging.WARNING, tty=True)
    log = LogTo()
    log("info")
    debug(log, "detail")
    warn(log, "w")
    log("error: e")
    assert capsys.readouterr().err.splitlines() == ["warning: w", "error: e"]
    setup(logging.DEBUG, tty=True)
    debug(log, "detail")
    assert capsys.readouterr().err.splitlines() == ["detail"]


def test_a_plain_callable_log_still_gets_the_prefix() -> None:
    """Tests and the notification tail pass plain callables: a warning reaches them as
    ``warning: ...``, and ``debug`` does not reach them at all."""
    lines: list[str] = []
    warn(lines.append, "x")
    debug(lines.append, "y")
    assert lines == ["warning: x"]


def test_secret_values_never_reach_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    redact.remember("hunter2-very-secret")
    setup(logging.INFO, tty=False, scrub=redact.scrub)
    get_logger("backup").warning("connect failed with password %s", "hunter2-very-secret")
    err = capsys.readouterr().err
    assert "hunter2" not in err and "password ***" in err


def test_context_is_per_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """Hosts backed up in parallel each log under their own name."""
    setup(logging.INFO, tty=False)
    log = LogTo()

    def run(host: str) -> None:
        with context(host=host):
            log(f"hello from {host}")

    threads = [threading.Thread(target=run, args=(h,)) for h in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().err.splitlines()
    assert sorted(ln.split(" ", 1)[1] for ln in lines) == [
        "host=a info: hello from a",
        "host=b info: hello from b",
        "host=c info: hello from c",
    ]
