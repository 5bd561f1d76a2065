"""``worker dashboard`` in headless Chromium, with real ``worker run`` processes.

Given a queue on SQLite with a real worker: the queue page shows its depth; a failed
message opened in the browser shows its reason, traceback and body, and "Retry" puts it
back for the running worker, after which the page shows it gone; "Pause" stops the worker
taking (``worker status`` says paused) until "Resume". And the guard: beyond loopback the
dashboard refuses to start without a token and refuses requests without it; a cross-site
POST is refused; a read-only dashboard refuses every action. On every broker the queue page
shows the broker's depth (or "unknown") and a retried dead letter goes back on the broker;
after a broker outage (a proxy the test stops) the pages show the counts again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from queuekit import connect
from tests.dashboard_support import browser, dashboard
from tests.proxy import Proxy
from tests.support import require_broker, wait_until
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker, stop


@dataclass
class Site:
    url: str
    queue: str
    jobstore: str
    tmp: Path

    def env(self) -> dict[str, str]:
        return {"QUEUEKIT_JOBSTORE": self.jobstore, "QK_OUT": str(self.tmp / "out.txt"),
                "QK_FIXED": str(self.tmp / "fixed")}  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(sqlite_url(tmp_path / "queues.db"), f"dash-{uuid.uuid4().hex[:8]}",
                sqlite_url(tmp_path / "jobs.db"), tmp_path)  # fmt: skip


@pytest.fixture
def driver() -> Iterator[webdriver.Chrome]:
    chrome = browser()
    try:
        yield chrome
    finally:
        chrome.quit()


def cell(driver: webdriver.Chrome, queue: str, css: str) -> str:
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{queue}"]')
    return str(row.find_element(By.CSS_SELECTOR, css).text)


def status_of(site: Site) -> dict[str, object]:
    done = run_worker("status", "--url", site.url, "--json", site.queue, cwd=site.tmp,
                      env=site.env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return next(q for q in data["queues"] if q["name"] == site.queue)  # type: ignore[no-any-return]


def test_queue_page_failed_retry_and_pause_with_a_running_worker(
    site: Site, driver: webdriver.Chrome
) -> None:
    with (
        connect(site.url, jobstore=site.jobstore) as conn,
        dashboard("--url", site.url, site.queue, cwd=site.tmp, env=site.env()) as base,
    ):
        # Given three messages waiting on the queue
        conn.queue(site.queue).publish_many([{"n": n} for n in (1, 2, 3)])
        # When the queue page is opened, Then it shows their depth
        driver.get(base + "/")
        assert cell(driver, site.queue, ".ready") == "3"
        conn.transport.purge(site.queue)

        # Given a real worker that fails every message for good until it is fixed
        worker = start_worker("run", "tests.workers.queues.BrokenUntilFixedQueue", "--url",
                              site.url, "--queue", site.queue, "-v", cwd=site.tmp,
                              env=site.env(), log=site.tmp / "worker.log")  # fmt: skip
        try:
            conn.queue(site.queue).publish({"n": 7})
            wait_until(lambda: conn.failed.list(site.queue), 30, "the message to fail")
            (entry,) = conn.failed.list(site.queue)
            # When the failed message is opened from the queue's failed list
            driver.get(f"{base}/failed?queue={quote(site.queue)}")
            driver.find_element(By.LINK_TEXT, str(entry.id)).click()
            # Then its reason, traceback and raw body are shown
            assert "not fixed yet" in driver.find_element(By.ID, "reason").text
            assert "PermanentError" in driver.find_element(By.ID, "traceback").text
            assert '"n": 7' in driver.find_element(By.ID, "body").text
            # When the worker is fixed and "Retry" is clicked
            (site.tmp / "fixed").touch()
            driver.find_element(By.XPATH, "//button[text()='Retry']").click()
            # Then the running worker processes it, and the page shows it gone
            wait_until(lambda: "7" in lines(site.tmp / "out.txt"), 30, "the retried message")
            assert "1 message(s) back on their queue" in driver.page_source
            driver.get(f"{base}/failed?queue={quote(site.queue)}")
            assert driver.find_elements(By.CSS_SELECTOR, "tr[data-failed]") == []

            # When "Pause" is clicked on the queue page
            driver.get(base + "/")
            row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{site.queue}"]')
            row.find_element(By.XPATH, ".//button[text()='Pause']").click()
            # Then the worker says it stopped taking, and worker status says paused
            wait_until(lambda: "is paused" in (site.tmp / "worker.log").read_text(), 30,
                       "the worker to notice the pause")  # fmt: skip
            assert status_of(site)["paused"] is True
            assert cell(driver, site.queue, ".state") == "paused"
            # And a message published now waits: over three of its pause checks it is not taken
            conn.queue(site.queue).publish({"n": 8})
            seen = time.monotonic()
            while time.monotonic() - seen < 3.0:
                assert "8" not in lines(site.tmp / "out.txt")
                time.sleep(0.1)
            driver.get(base + "/")
            assert cell(driver, site.queue, ".ready") == "1"
            # When "Resume" is clicked, Then the worker takes it
            row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{site.queue}"]')
            row.find_element(By.XPATH, ".//button[text()='Resume']").click()
            wait_until(lambda: "8" in lines(site.tmp / "out.txt"), 30, "the resumed queue")
            assert status_of(site)["paused"] is False
        finally:
            stop(worker)


def test_a_cross_site_post_is_refused(site: Site, driver: webdriver.Chrome) -> None:
    with (
        connect(site.url, jobstore=site.jobstore) as conn,
        dashboard("--url", site.url, site.queue, cwd=site.tmp, env=site.env()) as base,
    ):
        # Given the browser has visited the dashboard (so it holds its cookies)
        driver.get(base + "/")
        # When a page of another origin submits a form to the dashboard's pause action
        target = f"{base}/queues/{quote(site.queue)}/pause"
        form = (f'<form id="f" method="post" action="{target}">'
                '<input name="csrf" value="guessed"></form>'
                '<script>document.getElementById("f").submit()</script>')  # fmt: skip
        other = site.tmp / "other-site.html"
        other.write_text(form, encoding="utf-8")
        driver.get(other.as_uri())
        wait_until(lambda: driver.current_url.startswith(base), 30, "the form to post")
        # Then it is refused, and the queue is not paused
        assert "cross-site request refused" in driver.page_source
        assert conn.jobs.paused_queues() == {}
        # And so is a script's POST without the form's CSRF field
        refused = httpx.post(target, data={"back": "/"})
        assert refused.status_code == 403
        assert conn.jobs.paused_queues() == {}


def test_beyond_loopback_a_token_is_required(site: Site, driver: webdriver.Chrome) -> None:
    # Given no token, When the dashboard is asked to bind every address, Then it refuses
    done = run_worker("dashboard", "--url", site.url, "--host", "0.0.0.0", cwd=site.tmp,
                      env=site.env(), timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert "set a token" in done.stderr
    token = uuid.uuid4().hex
    env = {**site.env(), "QUEUEKIT_DASHBOARD_TOKEN": token}
    with dashboard("--url", site.url, site.queue, cwd=site.tmp, env=env,
                   host="0.0.0.0") as base:  # fmt: skip
        # When a request comes without the token, Then it is refused, saying nothing of the broker
        refused = httpx.get(base + "/")
        assert refused.status_code == 401
        assert "sqlite" not in refused.text and site.queue not in refused.text
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(base + "/failed", headers=wrong).status_code == 401
        # And with it, it is served, without the token in the page
        page = httpx.get(base + "/", headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200
        assert site.queue in page.text
        assert token not in page.text
        # And a browser signs in once with the token, then sees the pages
        driver.get(base + "/")
        assert "Sign in" in driver.title
        driver.find_element(By.NAME, "token").send_keys(token)
        driver.find_element(By.XPATH, "//button[text()='Sign in']").click()
        wait_until(lambda: "Queues" in driver.title, 30, "the queue page")
        assert token not in driver.page_source
        assert token not in str(driver.get_cookies())


def test_a_read_only_dashboard_shows_no_action_and_refuses_them(site: Site) -> None:
    with (
        connect(site.url, jobstore=site.jobstore) as conn,
        dashboard("--url", site.url, site.queue, "--read-only", cwd=site.tmp,
                  env=site.env()) as base,
    ):  # fmt: skip
        with httpx.Client(base_url=base) as client:
            # Given a page read, with its CSRF cookie
            page = client.get("/")
            assert page.status_code == 200
            assert "read-only" in page.text
            for hours in ("nan", "inf", "-3", "x"):  # a chart window out of range: the default
                assert client.get(f"/?hours={hours}").status_code == 200
            # Then it has no button
            assert "<button" not in page.text
            # When an action is posted with a valid CSRF value, Then it is refused
            csrf = client.cookies["qk_csrf"]
            refused = client.post(f"/queues/{quote(site.queue)}/pause",
                                  data={"csrf": csrf, "back": "/"})  # fmt: skip
            assert refused.status_code == 403
            assert "read-only" in refused.text
        assert conn.jobs.paused_queues() == {}


def test_a_selection_is_deleted_and_a_whole_queue_retried(site: Site) -> None:
    with (
        connect(site.url, jobstore=site.jobstore) as conn,
        dashboard("--url", site.url, site.queue, cwd=site.tmp, env=site.env()) as base,
        httpx.Client(base_url=base) as client,
    ):
        # Given four dead letters of the queue
        ids = [conn.jobs.add_failed(site.queue, b"body %d" % i, "bad") for i in range(4)]
        client.get("/failed")
        csrf = client.cookies["qk_csrf"]
        # When two are selected and deleted
        form = {"csrf": csrf, "back": "/failed", "id": [str(ids[0]), str(ids[2])]}
        assert client.post("/failed/delete", data=form).status_code == 303
        # Then the other two are left
        assert [e.id for e in conn.failed.list(site.queue)] == [ids[1], ids[3]]
        page = client.get(f"/failed?queue={quote(site.queue)}").text
        assert f'data-failed="{ids[0]}"' not in page and f'data-failed="{ids[1]}"' in page
        # When all of the queue is retried, Then both are back on the broker
        form = {"csrf": csrf, "back": "/failed", "queue": site.queue, "all": "1"}
        done = client.post("/failed/retry", data=form)
        assert done.status_code == 303
        assert "2+message" in done.headers["location"]  # "2 message(s) back on their queue"
        assert conn.failed.list(site.queue) == []
        assert conn.transport.stats(site.queue).ready == 2


XMPP = (
    "xmpp://queuekit:queuekit@127.0.0.1:{port}/?domain=localhost&pubsub=pubsub.localhost"
    "&tls=off&allow_plaintext=1"
)
BROKERS = {
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
    "rabbitmq-stomp": ("stomp://guest:guest@127.0.0.1:61613", 61613),
    "activemq": ("stomp://guest:guest@127.0.0.1:61623", 61623),
    "gearman": ("gearman://127.0.0.1:4731", 4731),
    "prosody": (XMPP.format(port=5222), 5222),
    "ejabberd": (XMPP.format(port=5322), 5322),
    "zmq": ("zmq://127.0.0.1:5560", 5560),
}


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_every_broker_shows_its_depth_and_takes_a_retried_message_back(
    broker: str, site: Site
) -> None:
    url, port = BROKERS[broker]
    require_broker(broker, "127.0.0.1", port)
    queue = site.queue
    with connect(url, jobstore=site.jobstore) as conn:
        try:
            # Given one message on the queue and one dead letter whose body never decoded
            conn.queue(queue).publish({"n": 1})
            conn.jobs.add_failed(queue, b"\xffraw bytes", "malformed: not JSON")
            ready = conn.transport.stats(queue).ready
            with (
                dashboard("--url", url, queue, cwd=site.tmp, env=site.env()) as base,
                httpx.Client(base_url=base) as client,
            ):
                # When the queue page is read, Then the depth is the broker's, or "unknown"
                page = client.get("/")
                assert page.status_code == 200
                row = page.text.split(f'<tr data-queue="{queue}">', 1)[1].split("</tr>", 1)[0]
                assert f'class="n ready">{"unknown" if ready is None else ready}<' in row
                assert "unknown" in row or ready == 1
                # When the dead letter is retried, Then it is back on the broker, as it was
                (entry,) = conn.failed.list(queue)
                form = {"csrf": client.cookies["qk_csrf"], "id": str(entry.id), "back": "/"}
                done = client.post("/failed/retry", data=form)
                assert done.status_code == 303, done.text
            assert conn.failed.list(queue) == []
            bodies = []
            deadline = time.monotonic() + 30
            while b"\xffraw bytes" not in bodies and time.monotonic() < deadline:
                delivery = conn.transport.receive(queue, 1.0)
                if delivery is not None:
                    bodies.append(delivery.body)
                    conn.transport.ack(delivery)
            assert b"\xffraw bytes" in bodies
        finally:
            conn.transport.delete(queue)


def test_the_dashboard_reopens_the_broker_after_it_went_away(site: Site) -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    proxy = Proxy(("127.0.0.1", 5672))
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_timeout=1"
    try:
        with (
            dashboard("--url", url, site.queue, cwd=site.tmp, env=site.env()) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            # Given a dashboard whose broker answers
            assert "could not be asked" not in client.get("/").text
            # When the broker goes away, Then the queue page says the broker could not be asked
            proxy.stop()
            assert 'class="error"' in client.get("/").text
            # When it is back, Then a later page shows the counts again
            proxy = Proxy(("127.0.0.1", 5672), port=proxy.port)
            wait_until(lambda: 'class="error"' not in client.get("/").text, 30,
                       "the dashboard to reconnect")  # fmt: skip
    finally:
        proxy.stop()
        with connect("amqp://guest:guest@127.0.0.1:5672/", jobstore=site.jobstore) as conn:
            conn.transport.delete(site.queue)


def test_a_retried_message_goes_back_through_the_broker_its_queue_is_routed_to(
    site: Site,
) -> None:
    # Given a queuekit.toml routing one queue to a second broker, one job store for both,
    # and a dead letter of the routed queue
    routed, default = sqlite_url(site.tmp / "routed.db"), site.url
    (site.tmp / "queuekit.toml").write_text(
        f'url = "{default}"\njobstore = "{site.jobstore}"\n[queues]\n"{site.queue}" = "{routed}"\n'
    )
    with connect(default, jobstore=site.jobstore) as store:
        failed_id = store.jobs.add_failed(site.queue, b'{"bad": 1}', "test")
    # When the dashboard (on the configured default broker) retries it
    with (
        dashboard(cwd=site.tmp, env={}) as base,
        httpx.Client(base_url=base) as client,
    ):
        client.get("/failed")
        form = {"csrf": client.cookies["qk_csrf"], "id": str(failed_id), "back": "/failed"}
        done = client.post("/failed/retry", data=form)
        assert done.status_code == 303, done.text
        assert "1+message" in done.headers["location"]
    # Then it is on the routed broker's queue, not the default broker's, and not failed
    with connect(routed, jobstore=site.jobstore) as on_routed:
        assert on_routed.queue(site.queue).depth() == 1
        assert on_routed.failed.list() == []
    with connect(default, jobstore=site.jobstore) as on_default:
        assert on_default.queue(site.queue).depth() == 0


def test_a_job_is_found_by_its_dedup_key_and_shows_its_payload(
    site: Site, driver: webdriver.Chrome
) -> None:
    with (
        connect(site.url, jobstore=site.jobstore) as conn,
        dashboard("--url", site.url, site.queue, cwd=site.tmp, env=site.env()) as base,
    ):
        # Given two recorded messages, one with a dedup key
        key = f"order-7-{site.queue}"
        job_id = conn.queue(site.queue).publish({"order": 7, "note": "<b>"}, key=key,
                                                record=True)  # fmt: skip
        conn.queue(site.queue).publish({"order": 8}, record=True)
        # When the key is searched for on the jobs page
        driver.get(base + "/jobs")
        search = driver.find_element(By.NAME, "q")
        search.send_keys(key)
        search.submit()
        # Then that one record is shown, with its key and its payload (as text)
        assert [h.text for h in driver.find_elements(By.TAG_NAME, "h2")] == [job_id]
        assert driver.find_element(By.CSS_SELECTOR, "dd.key").text == key
        payload = json.loads(driver.find_element(By.CSS_SELECTOR, "pre.payload").text)
        assert payload == {"order": 7, "note": "<b>"}
        assert "64 Ki characters" in driver.page_source


@pytest.mark.parametrize("broker", ["rabbitmq", "rabbitmq-stomp"])
def test_the_dashboard_answers_while_its_broker_is_gone(broker: str, site: Site) -> None:
    url, port = BROKERS[broker]
    require_broker(broker, "127.0.0.1", port)
    proxy = Proxy(("127.0.0.1", port))
    # Given a dashboard on the broker's default options (the long reconnect_timeout)
    through = url.replace(f":{port}", f":{proxy.port}")
    try:
        with (
            dashboard("--url", through, site.queue, cwd=site.tmp, env=site.env()) as base,
            httpx.Client(base_url=base, timeout=30) as client,  # well under reconnect_timeout
        ):
            assert client.get("/").status_code == 200
            # When the broker goes away, Then the pages still answer, and where the
            # broker counts (AMQP) the queue says it could not be asked
            proxy.stop()
            page = client.get("/")
            assert page.status_code == 200
            assert ('class="error"' in page.text) == (broker == "rabbitmq")
            assert client.get("/workers").status_code == 200
    finally:
        proxy.stop()
        with connect(url, jobstore=site.jobstore) as conn:
            conn.transport.delete(site.queue)
