"""The explorer in a real browser: Debian's headless Chromium driven by selenium, for the
explorer's tests (``tests/explorer/``), its measurements and its screenshot
(``bench/explorer.py``).

Selenium gets Debian's driver and browser by path and ``SE_OFFLINE=true``, so that
selenium-manager downloads nothing; Chromium runs as ``--headless=new --no-sandbox`` (it refuses
to start as root otherwise). ``scripts/install_browser.sh`` (``make browser``) installs both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "sudo bash scripts/install_browser.sh (or: make browser)"


def missing() -> str | None:
    """Why no browser can be driven here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -e '.[dev]'"
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if absent:
        return f"Chromium is not installed ({', '.join(absent)} missing): {INSTALL}"
    return None


def chromium(width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium session (selenium ``WebDriver``) with the browser's console and
    network events logged (``driver.get_log("browser" | "performance")``)."""
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager: no download, no lookup
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    why = missing()
    if why:
        raise RuntimeError(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1",
                "--hide-scrollbars", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=shutil.which(CHROMEDRIVER) or CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=options)


def open_explorer(driver: Any, path: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """Load the explorer file at ``path`` and wait (bounded) until it has drawn; returns its
    ``explorerState()``. Raises if the page reports an error."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(Path(path).resolve().as_uri())
    script = "const s = window.explorerState && window.explorerState(); return s && (s.ready || s.error) ? s : null"
    state = WebDriverWait(driver, timeout, poll_frequency=0.02).until(
        lambda d: d.execute_script(script)
    )
    if state["error"]:
        raise RuntimeError(f"the explorer failed in the browser: {state['error']}")
    return state


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return window.explorerState()")


def click_cell(driver: Any, cell: int, canvas: str = "panel-field") -> dict[str, Any]:
    """Move the mouse to patch ``cell``'s centre on the panel ``canvas`` and click it; returns
    the state once the page has drawn that patch."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    element = driver.find_element("id", canvas)
    gh, gw = state(driver)["grid"]
    size = element.size
    dx = ((cell % gw) + 0.5) * size["width"] / gw - size["width"] / 2
    dy = ((cell // gw) + 0.5) * size["height"] / gh - size["height"] / 2
    before = state(driver)["timing"]["draws"]
    ActionChains(driver, duration=0).move_to_element_with_offset(
        element, round(dx), round(dy)
    ).click().perform()
    return WebDriverWait(driver, 10, poll_frequency=0.02).until(
        lambda d: (
            (s := state(d))["patch"] == cell and s["pinned"] and s["timing"]["draws"] > before and s
        )
    )


def set_slider(driver: Any, slider: str, index: int) -> dict[str, Any]:
    """Move the range input ``slider`` ("alpha", "beta") to stop ``index`` with the keyboard
    (Home, then Right arrows); returns the state once drawn there."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    element = driver.find_element("id", slider)
    element.send_keys(Keys.HOME + Keys.ARROW_RIGHT * index)
    key = f"{slider}Index"
    return WebDriverWait(driver, 10, poll_frequency=0.02).until(
        lambda d: (s := state(d))[key] == index and s
    )


def select(driver: Any, element_id: str, value: int) -> dict[str, Any]:
    """Choose ``value`` in the select ``element_id`` ("block", "head"); returns the state."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element("id", element_id)).select_by_value(str(value))
    return WebDriverWait(driver, 10, poll_frequency=0.02).until(
        lambda d: (s := state(d))[element_id] == value and s
    )


def requests_made(driver: Any) -> list[str]:
    """The URLs of every request the page sent since the last call (Chromium's network
    events), the page's own file included."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
