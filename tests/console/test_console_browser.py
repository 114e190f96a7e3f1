"""The console in a real browser: headless Chromium driven by selenium, against a real
``thinghub serve`` on loopback, with a device signed in over MQTT (paho).

One walk through every page as a person would use it: sign in; the Overview's counters and
rate chart; find the device, see its session, subscription and shadow; start a live tail in
a second tab; publish to the device with MQTT 5 properties and see the message arrive both
in the device's paho client and in the tail; follow the MessageId to its delivery trace;
disable the device (its MQTT connection closes) and enable it again; retained messages
(publish one, browse, view, delete); products and a product's topic categories; sign out.

Screenshots of each page, at a laptop width and at a phone width, are saved under the
pytest temporary directory and copied to ``build/console-screenshots/`` (gitignored).

Skipped, saying so, only when Chromium or chromedriver is not installed (CI installs both).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from consolehub import KEY_ID, ROOT, SECRET, TIMEOUT, ConsoleHub, Device, PahoDevice

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need chromium and chromedriver (Debian: apt-get install "
    "chromium chromium-driver); .ci/run installs them",
)

if CHROMIUM is not None and CHROMEDRIVER is not None:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

LAPTOP = (1366, 900)
PHONE = (390, 844)
SCREENSHOTS = ROOT / "build" / "console-screenshots"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleHub]:
    started = ConsoleHub(tmp_path_factory.mktemp("console-browser"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}", "--lang=en-GB",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Screenshots of whole pages, named by width and step, in the pytest temporary directory
    and in build/console-screenshots/."""

    def __init__(self, driver: WebDriver, directory: Path) -> None:
        self.driver = driver
        self.directory = directory
        self.size = LAPTOP
        self.count = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob("*.png"):  # this run's pictures only
            old.unlink()

    def take(self, name: str) -> None:
        """The whole page, not only the window (Chrome DevTools Page.captureScreenshot)."""
        self.count += 1
        label = "laptop" if self.size == LAPTOP else "phone"
        content = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": content["width"], "height": content["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        target = self.directory / f"{label}-{self.count:02d}-{name}.png"
        target.write_bytes(base64.b64decode(shot["data"]))
        shutil.copy(target, SCREENSHOTS / target.name)

    def resize(self, size: tuple[int, int]) -> None:
        self.size = size
        self.driver.set_window_size(*size)


def wait(driver: WebDriver, condition: Callable[[Any], Any], what: str) -> Any:
    # The page redraws a view as it loads: an element found may be replaced before it is read.
    waiter = WebDriverWait(
        driver, TIMEOUT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return waiter.until(condition, what)


def visible(driver: WebDriver, css: str, text: str | None = None) -> WebElement:
    """The first visible element matching ``css`` (and holding ``text``), once there is one."""

    def find(d: WebDriver) -> WebElement | bool:
        for element in d.find_elements(By.CSS_SELECTOR, css):
            if element.is_displayed() and (text is None or text in element.text):
                return element
        return False

    found: WebElement = wait(driver, find, f"{css} holding {text!r}")
    return found


def heading(driver: WebDriver, text: str) -> None:
    visible(driver, "main h1", text)


def go(driver: WebDriver, hub: ConsoleHub, fragment: str) -> None:
    driver.get(f"{hub.url}/console#{fragment}")


def accept_confirm(driver: WebDriver) -> None:
    wait(driver, EC.alert_is_present(), "the confirmation dialog")
    driver.switch_to.alert.accept()


def fill(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def set_shadow(hub: ConsoleHub, thing: str, reported: dict[str, Any]) -> None:
    client = boto3.client(
        "iot-data",
        endpoint_url=hub.url,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )
    client.update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": {"reported": reported}}).encode()
    )


def test_every_page_in_a_browser(
    hub: ConsoleHub, browser: WebDriver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    driver = browser
    shots = Shots(driver, tmp_path_factory.mktemp("console-screenshots"))
    product = hub.product("greenhouse")
    device = hub.device(product, "thermostat_1")
    for spare in ("sensor_7", "sensor_8", "valve_2"):
        hub.device(product, spare)
    set_shadow(hub, device.name, {"temperature": 21.5, "firmware": "1.4.2"})
    paho = PahoDevice(hub, device)
    paho.connect()
    try:
        paho.subscribe(device.topic("user/get"))
        walk_laptop(driver, hub, shots, device, paho)
        walk_phone(driver, hub, shots, device)
    except BaseException:
        # What the page showed when the walk failed, beside the screenshots.
        failed = shots.directory / "failed.png"
        if driver.save_screenshot(str(failed)):
            shutil.copy(failed, SCREENSHOTS / failed.name)
        print("page text at the failure:\n" + driver.find_element(By.TAG_NAME, "body").text)
        raise
    finally:
        paho.stop()


def walk_laptop(
    driver: WebDriver, hub: ConsoleHub, shots: Shots, device: Device, paho: PahoDevice
) -> None:
    # --- sign in
    go(driver, hub, "/overview")
    key_id = visible(driver, "input[name=accessKeyId]")
    shots.take("signin")
    fill(key_id, KEY_ID)
    fill(visible(driver, "input[name=accessKeySecret]"), SECRET + "-wrong")
    visible(driver, "button[type=submit]").click()
    visible(driver, ".alert", "AccessKeyId or AccessKeySecret is wrong")
    fill(visible(driver, "input[name=accessKeySecret]"), SECRET)
    visible(driver, "button[type=submit]").click()

    # --- overview: counters, then the rates once two readings are in
    heading(driver, "Overview")
    visible(driver, ".stat .label", "Connections")
    visible(driver, ".hint", "Now ")
    visible(driver, "main", "Store and writers")
    shots.take("overview")

    # --- devices: search, then the device's page
    visible(driver, "#nav a", "Devices").click()
    heading(driver, "Devices")
    fill(visible(driver, "input[name=name]"), "thermo")
    visible(driver, "form.search button[type=submit]").click()
    link = visible(driver, "table a", device.name)
    visible(driver, ".pager", "1\u20131 of 1")  # an en dash
    shots.take("devices")
    link.click()
    heading(driver, device.name)
    visible(driver, "h1 + .pill, .head .pill", "ONLINE")
    visible(driver, "main table", device.topic("user/get"))
    visible(driver, "pre", '"temperature": 21.5')
    shots.take("device")
    device_page = driver.current_url

    # --- a live tail of the product's topics in a second tab
    first_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")
    tail_tab = driver.current_window_handle
    go(driver, hub, f"/tail?filter={quote('/' + device.product_key + '/#', safe='')}")
    visible(driver, "#tail-state", "Watching")

    # --- publish to the device with MQTT 5 properties
    driver.switch_to.window(first_tab)
    visible(driver, "button", "Publish to it").click()
    heading(driver, "Publish")
    topic = visible(driver, "input[name=topic]")
    assert topic.get_attribute("value") == device.topic("user/get")
    fill(visible(driver, "textarea[name=payload]"), '{"setpoint": 22.5}')
    visible(driver, "details summary", "MQTT 5 properties").click()
    fill(visible(driver, "input[name=contentType]"), "application/json")
    visible(driver, "button", "Add a user property").click()
    fill(visible(driver, "input[aria-label='User property name']"), "origin")
    fill(visible(driver, "input[aria-label='User property value']"), "console")
    visible(driver, "form button[type=submit]", "Publish").click()
    message_id = visible(driver, "#published-id").text
    assert message_id.isdigit()
    visible(driver, ".notice", "matched 1 session")
    shots.take("publish")
    received = paho.messages.get(timeout=TIMEOUT)
    assert received == (
        device.topic("user/get"),
        b'{"setpoint": 22.5}',
        [("origin", "console")],
        "application/json",
    )

    # --- the tail shows it too
    driver.switch_to.window(tail_tab)
    visible(driver, "ol.tail li", device.topic("user/get"))
    visible(driver, "ol.tail li pre", '{"setpoint": 22.5}')
    visible(driver, "ol.tail li a", message_id)
    shots.take("tail")
    visible(driver, "button", "Pause").click()
    visible(driver, "button", "Resume")
    driver.close()
    driver.switch_to.window(first_tab)

    # --- its delivery trace
    visible(driver, ".notice a", "see its deliveries").click()
    heading(driver, "Message trace")
    visible(driver, "main table", device.client_id)
    visible(driver, "main table .pill", "acknowledged")
    shots.take("trace")

    # --- disable the device: its connection closes; enable it again
    driver.get(device_page)
    heading(driver, device.name)
    visible(driver, "main table", message_id)  # recent deliveries
    visible(driver, "button", "Disable").click()
    accept_confirm(driver)
    visible(driver, ".head .pill", "DISABLE")
    assert paho.closed.wait(TIMEOUT), "the device's MQTT connection did not close"
    visible(driver, "button", "Enable")
    shots.take("device-disabled")
    visible(driver, "button", "Enable").click()
    visible(driver, ".head .pill", "OFFLINE")

    # --- retained messages: publish one, browse, view, delete
    go(driver, hub, "/publish")
    heading(driver, "Publish")
    fill(visible(driver, "input[name=topic]"), "greenhouse/zone1/climate")
    fill(visible(driver, "textarea[name=payload]"), '{"temperature": 19.0, "humidity": 61}')
    visible(driver, "label", "Keep as the topic's retained message").click()
    visible(driver, "form button[type=submit]", "Publish").click()
    visible(driver, "#published-id")
    visible(driver, "#nav a", "Retained").click()
    heading(driver, "Retained messages")
    fill(visible(driver, "input[name=filter]"), "greenhouse/#")
    visible(driver, "form.search button[type=submit]").click()
    row = visible(driver, "table a", "greenhouse/zone1/climate")
    shots.take("retained")
    row.click()
    heading(driver, "Retained message")
    visible(driver, "pre", '"humidity": 61')
    shots.take("retained-view")
    visible(driver, "button", "Delete").click()
    accept_confirm(driver)
    heading(driver, "Retained messages")
    go(driver, hub, "/retained?filter=greenhouse%2F%23")
    visible(driver, ".empty", "No retained message matches.")

    # --- products and topic categories
    visible(driver, "#nav a", "Products").click()
    heading(driver, "Products")
    link = visible(driver, "table a", "greenhouse")
    shots.take("products")
    link.click()
    heading(driver, "greenhouse")
    visible(driver, "main table", "/user/get")
    visible(driver, "main table", "Devices subscribe")
    shots.take("product")


def walk_phone(driver: WebDriver, hub: ConsoleHub, shots: Shots, device: Device) -> None:
    shots.resize(PHONE)
    shots.count = 0
    go(driver, hub, "/overview")
    heading(driver, "Overview")
    visible(driver, ".hint", "Now ")
    shots.take("overview")
    go(driver, hub, "/devices")
    heading(driver, "Devices")
    visible(driver, "table a", device.name)
    shots.take("devices")
    visible(driver, "table a", device.name).click()
    heading(driver, device.name)
    visible(driver, "main", "Recent deliveries")
    shots.take("device")
    go(driver, hub, "/products")
    heading(driver, "Products")
    visible(driver, "table a", "greenhouse").click()
    visible(driver, "main table", "/user/get")
    shots.take("product")
    go(driver, hub, "/publish?topic=greenhouse%2Fzone2%2Fclimate&retain=1")
    heading(driver, "Publish")
    fill(visible(driver, "textarea[name=payload]"), '{"temperature": 18.2}')
    visible(driver, "form button[type=submit]", "Publish").click()
    visible(driver, "#published-id")
    shots.take("publish")
    go(driver, hub, "/retained?filter=greenhouse%2F%23")
    visible(driver, "table a", "greenhouse/zone2/climate")
    shots.take("retained")
    go(driver, hub, "/tail?filter=greenhouse%2F%23")
    visible(driver, "#tail-state", "Watching")
    # To the device, offline since it was disabled: its persistent session keeps the copy.
    go(driver, hub, f"/publish?topic={quote(device.topic('user/get'), safe='')}")
    fill(visible(driver, "textarea[name=payload]"), '{"setpoint": 20}')
    visible(driver, "form button[type=submit]", "Publish").click()
    message_id = visible(driver, "#published-id").text
    go(driver, hub, "/trace")
    visible(driver, "main table", message_id)
    shots.take("trace-list")
    go(driver, hub, f"/trace/{message_id}")
    visible(driver, "main h2", message_id)
    visible(driver, "main table .pill", "queued")
    shots.take("trace")
    go(driver, hub, "/tail?filter=greenhouse%2F%23")
    visible(driver, "#tail-state", "Watching")
    other = hub.console()  # another session publishes while the page watches
    assert other.sign_in().status == 200
    for zone, value in ((3, 17.9), (4, 20.1)):
        body = {"topic": f"greenhouse/zone{zone}/climate", "payload": f'{{"temperature": {value}}}'}
        assert other.post("/publish", body).status == 200
    visible(driver, "ol.tail li", "greenhouse/zone4/climate")
    shots.take("tail")
    visible(driver, "#signout").click()
    visible(driver, ".notice", "You are signed out.")
    shots.take("signin")
    # The session is gone on the hub too: a reload shows the sign-in page again.
    driver.refresh()
    visible(driver, "input[name=accessKeyId]")
