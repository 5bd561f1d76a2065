"""Running ``worker dashboard`` as a user does, and a headless Chromium to look at it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support import port_open, wait_until
from tests.workers.harness import start_worker, stop

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def dashboard(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """``worker dashboard ARGS`` on a free port; yields its base URL (on 127.0.0.1)."""
    port = free_port()
    log = cwd / f"dashboard-{port}.log"
    process = start_worker("dashboard", *args, "--host", host, "--port", str(port), cwd=cwd,
                           env=env, log=log)  # fmt: skip
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or process.poll() is not None, 30,
                   "the dashboard to listen")  # fmt: skip
        assert process.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        stop(process)


def browser() -> webdriver.Chrome:
    """Debian's headless Chromium through its chromedriver (no download: both are given)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):  # CI installs them (scripts/brokers.d/chromium.sh)
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
