#!/usr/bin/env python3
"""The README's screenshots of the playground: serve two runs, use each panel in headless Chromium
(Debian's chromium + chromium-driver), save ``docs/images/playground-<panel>.png``.

    .venv/bin/python docs/screenshots.py RUN_A RUN_B    # RUN_B: an LSTM for the hidden-units panel
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import Select, WebDriverWait

DOCS = Path(__file__).resolve().parent


def main() -> None:
    run_a, run_b = sys.argv[1:3]
    server = subprocess.Popen(
        [sys.executable, "-m", "rnnkit.cli", "serve", run_a, run_b, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    url = "http://" + server.stdout.readline().split("http://", 1)[1].split()[0]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1180,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    a, b = Path(run_a).resolve().name, Path(run_b).resolve().name
    wait = WebDriverWait(driver, 60)

    def find(element_id):
        return driver.find_element("id", element_id)

    def fill(element_id, value):
        find(element_id).clear()
        find(element_id).send_keys(value)

    def shot(name):
        time.sleep(0.3)
        driver.find_element("tag name", "main").screenshot(str(DOCS / "images" / f"playground-{name}.png"))
        print(DOCS / "images" / f"playground-{name}.png")

    try:
        driver.get(url)
        wait.until(lambda d: f"{a}:" in find("runs-summary").text)
        Select(find("gen-run")).select_by_value(a)
        fill("gen-n", "400")
        fill("gen-seed", "3")
        driver.execute_script(
            "const t = document.getElementById('gen-temperature'); t.value = 0.7; t.dispatchEvent(new Event('input'));"
        )
        find("gen-start").click()
        wait.until(lambda d: "characters in" in find("gen-status").text)
        ActionChains(driver).move_to_element(driver.find_elements("css selector", "#gen-output span")[60]).perform()
        shot("generate")

        find("tab-score").click()
        fill(
            "score-text",
            "The Time Traveller (for so it will be convenient to speak of him) was expounding a "
            "recondite matter to us. His grey eyes shone and twinkled, and his usually pale face "
            "was flushed and animated. Xyzzy, qwfp jkx!",
        )
        Select(find("score-run")).select_by_value(b)
        find("score-start").click()
        wait.until(lambda d: "bits/char" in find("score-status").text)
        shot("surprisal")

        find("tab-units").click()
        Select(find("units-run")).select_by_value(b)
        fill(
            "units-text",
            '"I think," said the Time Traveller, "that you are wrong." The Medical Man nodded. '
            '"Quite so," he said, "and yet..." He paused.',
        )
        find("units-start").click()
        wait.until(lambda d: "ranked by" in find("units-status").text)
        shot("units")

        find("tab-compare").click()
        Select(find("compare-a")).select_by_value(a)
        Select(find("compare-b")).select_by_value(b)
        fill(
            "compare-text",
            "the time traveller was expounding a recondite matter to us his grey eyes shone "
            "and twinkled and his usually pale face was flushed and animated",
        )
        find("compare-start").click()
        wait.until(lambda d: "difference" in find("compare-status").text)
        shot("compare")
    finally:
        driver.quit()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
