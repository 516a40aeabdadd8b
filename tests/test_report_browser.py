"""The instructor's report in a real browser (Debian's headless Chromium): the room's matrix,
the plots drawn, every link resolving, and a phone-sized screen without sideways scrolling."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_counts import CATALOG, LOGS

from bpflab import report

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromedriver():
    """Debian's chromium and chromium-driver, installed here when missing (the test setup needs root)."""
    if not shutil.which("chromedriver"):
        if os.geteuid() != 0:
            pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return shutil.which("chromedriver")


def gathered(folder, lab, log=None, **record):
    folder.mkdir(parents=True)
    (folder / "output.log").write_text((LOGS / f"{log}.log").read_text() if log else f"{lab} output\n")
    (folder / "run.json").write_text(
        json.dumps(
            {
                "lab": lab,
                "vm": "lab",
                "stopped": "duration",
                "exit_status": 0,
                "lines": 5,
                "duration_s": 12.3,
                "kernel": "6.1.0-50-amd64",
                "bcc": "0.26.0",
                **record,
            }
        )
    )


@pytest.fixture
def runs(tmp_path):
    """Runs as bpflab gathers them: two counting labs, and a room's verify (seat-c never answered)."""
    runs = tmp_path / "runs"
    gathered(runs / "20261125T080000Z-hello-map", "hello-map", "hello-map")
    gathered(runs / "20261125T080100Z-syscall-count", "syscall-count", "syscall-count")
    fleet = runs / "20261125T080200Z-verify-fleet"
    hosts = {}
    for host, results in (("seat-a", ("PASS", "PASS")), ("seat-b", ("PASS", "FAIL"))):
        hosts[host] = {"runs": f"{fleet.name}/{host}", "labs": {}}
        for index, (lab, result) in enumerate(zip(("hello", "hello-map"), results, strict=True)):
            name = f"20261125T08020{index}Z-{lab}"
            gathered(fleet / host / name, lab)
            hosts[host]["labs"][lab] = {
                "lab": lab,
                "result": result,
                "folder": name,
                "duration_s": 12.0,
                "problems": [] if result == "PASS" else ["no line matched 'ID 0: \\\\d+'"],
                "time_to_attach_s": 5.0,
                "time_to_first_event_s": 0.1,
            }
    (fleet / "summary.json").write_text(json.dumps({"hosts": hosts, "failed_hosts": {"seat-c": "does not answer"}}))
    return runs


@pytest.fixture
def browser(chromedriver):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_the_report_shows_the_room_the_plots_and_working_links(runs, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = report.write(runs, CATALOG)
    browser.get(page.as_uri())
    rows = [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "table")[0].find_elements(By.TAG_NAME, "tr")
    ]
    assert rows == [
        ["lab \\ host", "seat-a", "seat-b", "seat-c"],
        ["hello", "PASS", "PASS", "–"],
        ["hello-map", "PASS", "FAIL", "–"],
    ]
    widths = browser.execute_script(
        "return [...document.querySelectorAll('figure svg')].map(svg => svg.getBoundingClientRect().width)"
    )
    assert len(widths) == 2 and min(widths) > 300  # hello-map and syscall-count, drawn
    assert "seat-c: does not answer" in browser.find_element(By.TAG_NAME, "body").text
    links = [link.get_attribute("href") for link in browser.find_elements(By.TAG_NAME, "a")]
    assert len(links) == 6 and all(link.startswith("file://") for link in links)
    assert all(Path(link.removeprefix("file://")).is_file() for link in links), links
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 50_000

    browser.set_window_size(390, 844)  # a phone: only the tables scroll sideways, not the page
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
