"""The chat page of serve.py (GET /, minigpt/serve_page.html) in a real headless Chromium driven by selenium:
every model's column fills with streamed tokens (each with its probability on hover), the reward and the
finish reason, and model text is shown as text (a <script> in an answer does not run).

Needs the system browser and driver (Debian: apt-get install chromium chromium-driver) and pip's selenium;
without them the browser test is skipped. The screenshot goes to tmp_path, or to $MINIGPT_SCREENSHOT when set.

Also a script for a screenshot of any running server (e.g. the real stage folders):
    python serve.py --out_dir=out --port=8000 &
    python tests/test_serve_page.py http://127.0.0.1:8000 docs/serve_page.png "What is 3 + 4?"
"""

import os
import re
import shutil
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


def test_page_is_served_and_self_contained(tiny_server):
    with urllib.request.urlopen(tiny_server + "/", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
        page = r.read().decode("utf-8")
    assert "/v1/chat/completions" in page and "/v1/models" in page
    # works offline: nothing loaded from elsewhere (no src/href to a URL, no CSS import or url())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(""", page)
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page   # model text goes in as text


def find_browser():
    """(chromium binary, chromedriver) of the system, or (None, None)."""
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    return binary, driver


def need_browser():
    """Skip the test unless a headless Chromium, its driver and selenium are installed."""
    binary, driver = find_browser()
    if binary is None or driver is None:
        pytest.skip("no chromium/chromedriver found (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")


def open_browser(width=1200, height=700):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",   # the page itself gets width x height
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return browser


def ask_in_page(browser, url, prompt, temperature=None, timeout=30):
    """Open the page, send `prompt` (Enter in the prompt box) and wait until every column has finished.
    Returns the column elements."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, timeout)
    wait.until(lambda b: b.execute_script("return document.body.dataset.ready === '1'"))
    if temperature is not None:   # move the slider as a user would: its value is shown next to it
        browser.execute_script("const s = document.getElementById('temperature'); s.value = arguments[0];"
                               "s.dispatchEvent(new Event('input'));", str(temperature))
        assert browser.find_element(By.ID, "temperature-value").text == f"{temperature:.2f}"
    box = browser.find_element(By.ID, "prompt")
    box.send_keys(prompt)
    box.send_keys(Keys.ENTER)
    columns = browser.find_elements(By.CSS_SELECTOR, ".column")
    wait.until(lambda b: all(c.get_attribute("data-state") in ("done", "error") for c in columns))
    return columns


def test_chat_page_in_a_real_browser(tiny_server, tmp_path):
    need_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = open_browser()
    try:
        # temperature 0: the tiny random models answer greedily, so the test does not depend on luck
        columns = ask_in_page(browser, tiny_server, "Add 3 and 4.", temperature=0)
        assert [c.get_attribute("data-model") for c in columns] == ["sft", "ppo"]    # pipeline order
        for c in columns:
            assert c.get_attribute("data-state") == "done", c.text
            tokens = c.find_elements(By.CSS_SELECTOR, ".answer span")
            assert tokens and all("%" in t.get_attribute("title") for t in tokens), c.text
            meta = c.find_element(By.CSS_SELECTOR, ".meta").text
            assert re.search(r"reward -?\d+\.\d{3}", meta) and "finish " in meta, meta
            assert re.search(rf"\b{len(tokens)} tokens?\b", meta), meta

        shot = os.environ.get("MINIGPT_SCREENSHOT") or str(tmp_path / "serve_page.png")
        assert browser.save_screenshot(os.path.join(ROOT, shot)), shot

        # an answer holding HTML is shown literally and nothing in it runs
        answer = columns[0].find_element(By.CSS_SELECTOR, ".answer")
        browser.execute_script("window.renderToken(arguments[0], arguments[1], -0.5)", answer, XSS)
        time.sleep(0.5)   # give an <img onerror> the time to fire, were it an element
        assert browser.execute_script("return window.pwned") is None
        assert XSS in answer.text
        assert not answer.find_elements(By.CSS_SELECTOR, "script, img")

        # an error from the server (OpenAI's error shape) is shown in the column, as text
        browser.execute_script("document.getElementById('prompt').value = arguments[0]", "cat " * 400)
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 30).until(
            lambda b: all(c.get_attribute("data-state") == "error" for c in columns))
        assert all("context" in c.find_element(By.CSS_SELECTOR, ".meta").text for c in columns)
    finally:
        browser.quit()


def send_in_page(browser, prompt, timeout=30):
    """Type `prompt` into the open page, send it and wait until every column has finished."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.ID, "prompt")
    box.send_keys(prompt)
    box.send_keys(Keys.ENTER)
    columns = browser.find_elements(By.CSS_SELECTOR, ".column")
    WebDriverWait(browser, timeout).until(
        lambda b: all(c.get_attribute("data-state") in ("done", "error") for c in columns))
    return columns


def test_each_column_keeps_its_conversation(tiny_server):
    """Two turns: each column shows both questions and both of its answers, and the second request carried
    the first turn (the page sent 3 messages, and the server read a longer prompt than the same question
    alone, or said it dropped the first turn to fit). "New conversation" starts every column over."""
    need_browser()
    from selenium.webdriver.common.by import By

    def turns(column):
        users = column.find_elements(By.CSS_SELECTOR, ".history .turn.user")
        answers = column.find_elements(By.CSS_SELECTOR, ".history .turn.assistant, .answer")
        return len(users), len(answers)

    browser = open_browser()
    try:
        columns = ask_in_page(browser, tiny_server, "Hi", temperature=0)
        first = [c.find_element(By.CSS_SELECTOR, ".answer").text for c in columns]
        columns = send_in_page(browser, "Add")
        second = {}
        for c, answer in zip(columns, first):
            assert c.get_attribute("data-state") == "done", c.text
            assert turns(c) == (2, 2) and c.get_attribute("data-sent") == "3"
            past = c.find_elements(By.CSS_SELECTOR, ".history .turn")
            assert [t.text for t in past[:2]] == ["Hi", answer]        # each model's own first answer
            second[c.get_attribute("data-model")] = (int(c.get_attribute("data-prompt-tokens")),
                                                     c.find_element(By.CSS_SELECTOR, ".meta").text)
        browser.find_element(By.ID, "new").click()
        assert all(turns(c) == (0, 1) and not c.find_element(By.CSS_SELECTOR, ".answer").text
                   for c in columns)
        for c in send_in_page(browser, "Add"):
            assert c.get_attribute("data-state") == "done", c.text
            assert turns(c) == (1, 1) and c.get_attribute("data-sent") == "1"
            tokens, meta = second[c.get_attribute("data-model")]
            assert tokens > int(c.get_attribute("data-prompt-tokens")) or "dropped" in meta, meta
    finally:
        browser.quit()


if __name__ == "__main__":   # python tests/test_serve_page.py URL OUT.png "PROMPT" [TEMPERATURE]
    url, out, prompt = sys.argv[1:4]
    browser = open_browser()
    try:
        ask_in_page(browser, url.rstrip("/"), prompt, float(sys.argv[4]) if len(sys.argv) > 4 else None,
                    timeout=300)
        browser.save_screenshot(out)
        print(f"wrote {out}")
    finally:
        browser.quit()
