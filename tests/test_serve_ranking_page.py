"""The ranking tab of serve.py's page (--label_file; minigpt/human_labels.py): in a real headless Chromium a
person ranks answers (a tie among them), reloads the page, finds the count and the latest rankings again,
and the label file holds exactly what was ranked; "Undo last" takes back exactly the last line. Over HTTP:
bad rankings (unknown answer, repeated answer, an id already ranked) and a half-written file are refused with
one line and the file is unchanged; serve.py does not start on a half-written file.

The browser test is skipped without chromium/chromedriver and selenium (as tests/test_serve_page.py)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, request_json, serving, write_tiny_stages
from minigpt.world import World
from test_serve_page import need_browser, open_browser

K = 3


@pytest.fixture(scope="module")
def ranking_server(tmp_path_factory):
    """(URL, label file) of serve.py over two tiny random models with the ranking tab on."""
    tmp = tmp_path_factory.mktemp("rank")
    write_tiny_stages(tmp / "out")
    label_file = tmp / "labels" / "human.jsonl"
    with serving(tmp / "out", f"--label_file={label_file}", f"--rank_k={K}", "--labeler=tester") as url:
        yield url, label_file


def test_bad_input_is_refused_with_one_line_and_loses_nothing(ranking_server):
    url, path = ranking_server
    status, shown = request_json(url + "/rank/sample", {"prompt": "Add 3 and 4."})
    assert status == 200 and shown["prompt"] == "Add 3 and 4."
    a = shown["answers"]
    assert len(a) == K and len(set(a)) == K                            # K different answers
    before = path.read_bytes() if path.exists() else None
    for body, message in [
        ({"id": shown["id"], "ranking": [[a[0]], [a[1], "Seven."], [a[2]]]}, 'unknown answer "Seven."'),
        ({"id": shown["id"], "ranking": [[a[0]], [a[1], a[0]], [a[2]]]}, "is ranked twice"),
        ({"id": shown["id"], "ranking": [[a[0], a[1], a[2]]]}, "every answer is tied"),
        ({"id": "0123", "ranking": [[a[0]], [a[1]], [a[2]]]}, "unknown answers id"),
        ({"id": shown["id"], "ranking": [[a[0]], [a[1]], [a[2]]], "labeler": "x\ny"}, "'labeler' must be"),
    ]:
        status, answer = request_json(url + "/rank/submit", body)
        assert status == 400 and message in answer["error"]["message"], answer
        assert "\n" not in answer["error"]["message"]
        assert (path.read_bytes() if path.exists() else None) == before

    status, done = request_json(url + "/rank/submit", {"id": shown["id"], "ranking": [[a[2]], [a[0], a[1]]]})
    assert status == 200 and done["record"]["labeler"] == "tester"   # the server's --labeler by default
    status, again = request_json(url + "/rank/submit", {"id": shown["id"], "ranking": [[a[2]], [a[0], a[1]]]})
    assert status == 400 and "unknown answers id" in again["error"]["message"]   # a double click adds nothing
    whole = path.read_bytes()
    assert whole.endswith(b"\n") and json.loads(whole.splitlines()[-1]) == done["record"]

    # a half-written last line (another writer killed mid-line): refused, one line naming it, file unchanged
    path.write_bytes(whole + b'{"prompt": "Add 3 and 4.", "resp')
    broken = path.read_bytes()
    n = broken.count(b"\n") + 1
    status, shown = request_json(url + "/rank/sample", {"prompt": "Hi"})
    a = shown["answers"]
    for route, body in [("/rank/submit", {"id": shown["id"], "ranking": [[x] for x in a]}),
                        ("/rank/undo", {"labeler": "tester"}), ("/rank/history", None)]:
        status, answer = request_json(url + route, body)
        assert status == 409 and answer["error"]["message"].startswith(
            f"{path}:{n}: the last line has no newline"), answer
        assert path.read_bytes() == broken
    path.write_bytes(whole)                                            # fixed by hand: the tab works again
    status, done = request_json(url + "/rank/undo", {"labeler": "tester"})
    assert status == 200 and done["count"] == whole.count(b"\n") - 1


def test_serve_refuses_to_start_on_a_half_written_label_file(tmp_path):
    write_tiny_stages(tmp_path / "out")
    path = tmp_path / "human.jsonl"
    path.write_bytes(b'{"prompt": "Hi", "responses": ["a", "b"]}\n{"prompt": "Hi", "respo')
    run = subprocess.run([sys.executable, "serve.py", f"--out_dir={tmp_path / 'out'}", "--port=1",
                          f"--label_file={path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {path}:2: the last line has no newline (half-written?); complete or remove it: "
        "nothing is written until then")


def wait_for(browser, script, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, timeout).until(lambda b: b.execute_script(script))


def rank_in_page(browser, prompt, ranks):
    """Get answers for prompt ('' = a world prompt), give answer i the rank ranks[i], submit. Returns the
    prompt and the answers as the page showed them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    box = browser.find_element(By.ID, "rank-prompt")
    box.clear()
    box.send_keys(prompt)
    browser.find_element(By.ID, "rank-get").click()
    wait_for(browser, "return document.getElementById('rank-view').dataset.state === 'answers'")
    shown = browser.execute_script("return [document.getElementById('rank-shown-prompt').textContent, "
                                   "[...document.querySelectorAll('.rank-text')].map((e) => e.textContent)]")
    for select, r in zip(browser.find_elements(By.CSS_SELECTOR, ".rank-select"), ranks):
        Select(select).select_by_value(str(r))
    count = int(browser.find_element(By.ID, "rank-count").get_attribute("data-count"))
    browser.find_element(By.ID, "rank-submit").click()
    wait_for(browser, f"return document.getElementById('rank-count').dataset.count === '{count + 1}'")
    return shown


def test_rank_reload_and_undo_in_a_real_browser(ranking_server, tmp_path):
    need_browser()
    from selenium.webdriver.common.by import By

    url, path = ranking_server
    start = path.read_bytes() if path.exists() else b""
    browser = open_browser()
    try:
        browser.get(url + "/#rank")
        wait_for(browser, "return document.body.dataset.rankReady === '1'")
        assert browser.find_element(By.ID, "chat-view").get_attribute("hidden") is not None
        name = browser.find_element(By.ID, "rank-name")
        assert name.get_attribute("value") == "tester"                 # the server's --labeler
        name.clear()
        name.send_keys("ada")
        # a typed prompt, answers ranked 2, 1, 2 (the first and the last tied), then a world prompt, 3 2 1
        prompt, a = rank_in_page(browser, "Add 3 and 4.", [2, 1, 2])
        assert prompt == "Add 3 and 4." and len(a) == K
        world_prompt, b = rank_in_page(browser, "", [3, 2, 1])
        assert world_prompt in {t.instruction for t in World(0).split("rm")}
        browser.save_screenshot(str(tmp_path / "rank.png"))

        browser.refresh()                                              # reload: the file's state comes back
        wait_for(browser, "return document.body.dataset.rankReady === '1'")
        count = browser.find_element(By.ID, "rank-count")
        assert count.text == f"{len(start.splitlines()) + 2} rankings in {path}"
        assert browser.find_element(By.ID, "rank-name").get_attribute("value") == "ada"
        latest = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#rank-history li")][:2]
        assert latest[0].startswith(f"ada: {world_prompt} → ")
        assert latest[1].startswith("ada: Add 3 and 4. → ")

        added = [json.loads(x) for x in path.read_bytes()[len(start):].splitlines()]
        assert len(added) == 2 and path.read_bytes().startswith(start)
        first, second = added
        assert {k: first[k] for k in ("prompt", "responses", "tied", "labeler", "source")} == {
            "prompt": "Add 3 and 4.", "responses": [a[1], a[0]], "tied": [[], [a[2]]], "labeler": "ada",
            "source": "page"}
        assert set(first["models"]) <= {"sft", "ppo"} and len(first["gold"]) == 2   # a prompt of the world
        assert (second["prompt"], second["responses"], second["tied"]) == (world_prompt, b[::-1], [[]] * 3)

        browser.find_element(By.ID, "rank-undo").click()               # takes back the world prompt's ranking
        wait_for(browser, "return document.getElementById('rank-view').dataset.state === 'undone'")
        assert path.read_bytes() == start + (json.dumps(first, ensure_ascii=False) + "\n").encode()
        assert count.get_attribute("data-count") == str(len(start.splitlines()) + 1)
        assert "undone: ada: " + world_prompt in browser.find_element(By.ID, "rank-status").text
    finally:
        browser.quit()
