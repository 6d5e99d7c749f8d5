"""The playground page in a real browser: headless Chromium driven by Selenium (Debian's ``chromium``
and ``chromium-driver``, which ``.ci/run`` installs; the driver is given by path, nothing is
downloaded). Screenshots of each panel go to ``$RNNKIT_SCREENSHOTS`` when set (``docs/`` holds the
README's), else to the test's temporary directory."""

import json
import os
import shutil
from pathlib import Path

import pytest

from rnnkit.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("RNNKIT_REQUIRE_BROWSER"):
    raise RuntimeError("RNNKIT_REQUIRE_BROWSER is set but chromium / chromedriver are not on PATH")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium + chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)",
)
WAIT_S = 30


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1180,900",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def set_value(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def screenshot(driver, tmp_path: Path, name: str) -> None:
    where = Path(os.environ.get("RNNKIT_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    driver.find_element("tag name", "main").screenshot(str(where / f"playground-{name}.png"))


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_playground_generates_scores_colours_and_compares(browser, live_server, served_runs, capsys, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(live_server + "/")
    wait_for(driver, lambda d: "book:" in text_of(d, "runs-summary"), "the page lists the served runs")

    # (1) streamed generation, as rnnkit generate with the same seed
    choose(driver, "gen-run", "book")
    set_value(driver, "gen-prefix", "time traveller")
    set_value(driver, "gen-n", "120")
    set_value(driver, "gen-seed", "11")
    driver.find_element("id", "gen-start").click()
    wait_for(driver, lambda d: "characters in" in text_of(d, "gen-status"), "generation finishes")
    spans = driver.find_elements("css selector", "#gen-output span")
    assert len(spans) == len("time traveller") + 120
    capsys.readouterr()
    assert main(["generate", str(served_runs["book"]), "--prefix", "time traveller", "-n", "120", "--seed", "11"]) == 0
    assert driver.execute_script(
        "return document.getElementById('gen-output').textContent;"
    ) == capsys.readouterr().out.rstrip("\n")
    ActionChains(driver).move_to_element(spans[20]).perform()
    assert "best:" in text_of(driver, "gen-detail")
    output = driver.find_element("id", "gen-output")
    output.send_keys(Keys.END)  # keyboard: the last character's alternatives
    assert "best:" in text_of(driver, "gen-detail") and spans[-1].get_attribute("class") == "selected"
    screenshot(driver, tmp_path, "generate")

    # (2) surprisal heatmap of a pasted text, with the total of /api/score
    driver.find_element("id", "tab-score").click()
    text = "the time traveller smiled. are you sure we can move freely in space?"
    set_value(driver, "score-text", text)
    driver.find_element("id", "score-start").click()
    wait_for(driver, lambda d: "bits/char" in text_of(d, "score-status"), "scoring finishes")
    from rnnkit.serve import load_served_run, score

    expected = score(load_served_run(served_runs["book"], None, "book"), text)  # the text as the run reads it
    coloured = driver.find_elements("css selector", "#score-output span")
    assert "".join(s.text or " " for s in coloured) == expected["text"] != text
    assert (
        sum(1 for s in coloured[1:] if s.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)")
        == len(coloured) - 1
    )
    assert f"{expected['bpc']:.4f} bits/char" in text_of(driver, "score-status")
    screenshot(driver, tmp_path, "surprisal")

    # (3) hidden units: the LSTM's units ranked by a marked pattern, the text coloured by the best one
    driver.find_element("id", "tab-units").click()
    choose(driver, "units-run", "lstm")
    set_value(driver, "units-text", 'He said, "the time machine," and "it moves" in time.')
    set_value(driver, "units-pattern", '"[^"]*"')
    driver.find_element("id", "units-start").click()
    wait_for(driver, lambda d: "ranked by |correlation|" in text_of(d, "units-status"), "units are read and ranked")
    options = driver.find_elements("css selector", "#units-unit option")
    assert len(options) == 12 and "with the pattern" in options[0].text
    unit_spans = driver.find_elements("css selector", "#units-output span")
    assert len(unit_spans) == len('He said, "the time machine," and "it moves" in time.')
    colours = {s.value_of_css_property("background-color") for s in unit_spans}
    assert len(colours) > 5  # coloured by the unit's value, not uniformly
    choose(driver, "units-state", "c")  # the LSTM's cell state
    wait_for(
        driver,
        lambda d: (
            "ranked by" in text_of(d, "units-status")
            and len(d.find_elements("css selector", "#units-unit option")) == 12
        ),
        "cell states are read",
    )
    screenshot(driver, tmp_path, "units")

    # (4) two runs on the same text
    driver.find_element("id", "tab-compare").click()
    choose(driver, "compare-a", "book")
    choose(driver, "compare-b", "lstm")
    set_value(driver, "compare-text", "the time traveller was expounding a recondite matter to us")
    driver.find_element("id", "compare-start").click()
    wait_for(driver, lambda d: "difference" in text_of(d, "compare-status"), "both runs scored")
    assert len(driver.find_elements("css selector", "#compare-output span")) == len(
        "the time traveller was expounding a recondite matter to us"
    )
    screenshot(driver, tmp_path, "compare")

    # a bad request shows its error on the page, and nothing went wrong in the console
    driver.find_element("id", "tab-generate").click()
    set_value(driver, "gen-n", "100000")
    driver.find_element("id", "gen-start").click()
    wait_for(driver, lambda d: "limit" in text_of(d, "gen-status"), "the server's refusal is shown")
    assert "error" in driver.find_element("id", "gen-status").get_attribute("class")
    errors = [e for e in console_errors(driver) if "413" not in e["message"]]  # the refused request itself
    assert errors == [], json.dumps(errors, indent=1)


def test_api_page_renders_from_the_server_alone(browser, live_server):
    driver = browser
    driver.get(live_server + "/docs")
    wait_for(driver, lambda d: "/api/generate" in d.find_element("tag name", "body").text, "Swagger UI renders")
    assert console_errors(driver) == []
