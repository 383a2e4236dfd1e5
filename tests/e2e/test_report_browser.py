"""`drkit report --html` opened in a real browser (Debian's Chromium driven by
Playwright, which downloads nothing): what a person sees on the page of a fleet with
a healthy host, a host whose newest drill failed, a late host and one past its RPO,
all written by drkit's own backup and drill-report code. Also: markup a hostile
bucket writer planted is shown as text and never runs; the page fits a phone's
width; dark mode.

``DRKIT_REPORT_SCREENSHOT=PATH`` also saves the screenshot there (``make screenshot``
writes the README's docs/images/report.png this way).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Keys
from tests.e2e.report_fleet import FAILED_CHECK, HOSTILE, HOSTILE_DETAIL, build_fleet
from tests.helpers import drkit

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "DRKIT_REPORT_SCREENSHOT"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="no /usr/bin/chromium (scripts/setup.sh installs it; CI fails instead)",
)


def fixed_now() -> dt.datetime:
    """Noon UTC today, or yesterday's before noon: the late host is then 9 h past its
    03:00 slot whatever the time the test runs."""
    real = dt.datetime.now(dt.UTC)
    noon = real.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if noon <= real else noon - dt.timedelta(days=1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_shows_the_fleet_as_a_person_reads_it(
    tmp_path: Path, keys: Keys, browser: Any
) -> None:
    now = fixed_now()
    fleet = build_fleet(tmp_path, keys.recipient, now)
    out = tmp_path / "page"
    env = {"DRKIT_POLICY_DIR": str(fleet.policy_dir), "DRKIT_NOW": now.isoformat()}
    res = drkit("report", "--html", str(out), "--json", env=env)
    assert res.returncode == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["hosts"] == {"web": "ok", "db": "ok", "cache": "late", "files": "breach"}
    plain = drkit("report", "--html", str(tmp_path / "again"), env=env)
    assert plain.returncode == 0, plain.output
    lines = plain.stdout.splitlines()
    assert lines[0].startswith(f"report: {tmp_path / 'again' / 'index.html'} (")
    assert lines[1:] == [  # the hosts not ok, with why
        f"  cache: late: scheduled backup of db, env missed (due {now:%Y-%m-%d} 03:00 UTC)",
        "  files: breach: newest backup 5d8h old, more than the RPO 3d",
    ]
    page_file = out / "index.html"
    text = page_file.read_text()
    assert HOSTILE not in text and "<script>" not in text  # escaped, not only inert

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.goto(page_file.as_uri())
    try:
        # The late host is marked late in the fleet table, the one past its RPO breach.
        states = (("web", "ok"), ("db", "ok"), ("cache", "late"), ("files", "breach"))
        for host, state in states:
            row = page.locator(f'#fleet ~ div tr[data-host="{host}"]')
            assert row.locator("td").first.locator(".badge").inner_text() == state
        assert "missed" in page.locator('tr[data-host="cache"]').inner_text()
        assert "more than the RPO 3d" in page.locator('tr[data-host="files"]').inner_text()

        # The newest failed drill's failed check, in full, as text (the planted
        # <script> is shown, not run).
        failed = page.locator('#failed ~ div.failed[data-host="db"]')
        assert failed.count() == 1
        assert FAILED_CHECK in failed.inner_text()
        assert failed.locator("pre").inner_text() == HOSTILE_DETAIL
        assert page.locator('#failed ~ div.failed[data-host="web"]').count() == 0

        # One point per drill on the RTO and RPO charts, with a text alternative.
        for host, drills in fleet.drills.items():
            section = page.locator(f'section:has(> h2:text-is("{host}"))')
            for chart in ("rto", "rpo"):
                svg = section.locator(f'svg[data-chart="{chart}"]')
                assert svg.locator("circle").count() == drills, (host, chart)
                assert f"{drills} point(s)" in (svg.get_attribute("aria-label") or "")
            assert section.locator('svg[data-chart="rto"] circle.fail').count() == (
                1 if host == "db" else 0
            )
        cache = page.locator('section:has(> h2:text-is("cache"))')
        assert cache.locator('svg[data-chart="stored"] circle').count() == 4
        assert "Never drilled" in cache.inner_text()

        # The planted snapshot is listed as untrusted, by its name as text; nothing ran.
        web = page.locator('section:has(> h2:text-is("web"))')
        assert HOSTILE in web.locator("ul.untrusted").inner_text()
        assert page.title().startswith("drkit fleet report")
        assert not dialogs
        assert page.locator("img, script").count() == 0
        assert [u for u in requests if not u.startswith("file:")] == []

        # The top of the page: the fleet table and the failed checks (the README's).
        shot = tmp_path / "report.png"
        bottom = page.evaluate(
            "document.querySelector('section[aria-labelledby=failed]')"
            ".getBoundingClientRect().bottom"
        )
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1200, "height": bottom + 8})
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        page.screenshot(path=str(tmp_path / "report-full.png"), full_page=True)

        # A phone: nothing wider than the screen but the tables' own scroll boxes.
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "report-phone.png"))

        # Dark and light follow the system setting.
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert light == "rgb(255, 255, 255)" and dark != light
    finally:
        page.close()
