"""The review page in a real browser (headless Chromium from the distribution, driven by Selenium):
logging in, a flagged pair with both thumbnails actually loaded, a decision by click and by keyboard
reaching the database, "quarantine the other" moving the right file, an undo from the history. The
screenshot in the README comes from here (`CLIPWATCH_SCREENSHOT=PATH`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from clipwatch.calibration import calibrate, from_decisions
from clipwatch.vocab import Decision, Status
from clipwatch.web.users import set_user
from conftest import Harness, wait_until, write_image
from test_calibration import seed
from test_review_http import copy_later, rotated_photo

pytestmark = pytest.mark.parametrize("store_url", ["mysql"], indirect=True)


@pytest.fixture
def page(make_harness: Callable[..., Harness], tmp_path: Path, chromium: Any) -> tuple[Harness, Any, str]:
    set_user(str(tmp_path / "users"), "ana", "correct horse")
    h = make_harness(metrics__listen="127.0.0.1:0", http__users_file=str(tmp_path / "users"))
    assert h.service._http is not None
    chromium.delete_all_cookies()
    return h, chromium, f"http://127.0.0.1:{h.service._http.port}"


def log_in(browser: Any, base: str) -> None:
    browser.get(base + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.NAME, "user").send_keys("ana")
    browser.find_element(By.NAME, "password").send_keys("correct horse")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_until(lambda: browser.current_url.rstrip("/") == base, timeout=10, what="the queue after logging in")


def dismiss_by_click(browser: Any, row_id: int) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#row-{row_id} button[data-action=dismissed]").click()


def loaded_images(browser: Any) -> list[int]:
    return browser.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll('.queue img')).map(i => i.complete ? i.naturalWidth : 0)")


def seed_pairs(h: Harness) -> dict[str, Any]:
    original = rotated_photo(h.root / "holiday.jpg", seed=1, size=(480, 360))
    h.upsert(original)
    h.upsert(copy_later(original, h.root / "holiday (1).jpg"))
    other = write_image(h.root / "shop-item.jpg", seed=2, size=(480, 320))
    h.upsert(other)
    h.upsert(copy_later(other, h.root / "shop-item-copy.jpg"))
    return h.verdicts()


def test_log_in_and_see_a_flagged_pair_with_both_thumbnails_loaded(page):
    h, browser, base = page
    rows = seed_pairs(h)
    browser.get(base + "/login")
    browser.find_element(By.NAME, "user").send_keys("ana")
    browser.find_element(By.NAME, "password").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    # the answer page replaces the form once the server has checked the password (bcrypt: not instant)
    error = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, ".error"), timeout=10, what="the login error")
    assert "Wrong user name or password" in error[0].text
    log_in(browser, base)
    items = browser.find_elements(By.CSS_SELECTOR, ".queue .item")
    assert [int(i.get_attribute("data-id")) for i in items] == [
        rows[str(h.root / "shop-item-copy.jpg")].id, rows[str(h.root / "holiday (1).jpg")].id]
    wait_until(lambda: len(loaded_images(browser)) == 4 and all(loaded_images(browser)), timeout=15,
               what="all four thumbnails to load")
    if os.environ.get("CLIPWATCH_SCREENSHOT"):
        browser.save_screenshot(os.environ["CLIPWATCH_SCREENSHOT"])


def test_not_a_duplicate_takes_the_item_out_and_clears_the_row(page):
    h, browser, base = page
    rows = seed_pairs(h)
    copy = rows[str(h.root / "holiday (1).jpg")]
    log_in(browser, base)
    dismiss_by_click(browser, copy.id)
    wait_until(lambda: not browser.find_elements(By.ID, f"row-{copy.id}"), timeout=10, what="the item to go")
    assert h.verdicts()[str(h.root / "holiday (1).jpg")].status == Status.OK
    assert [d.decided_by for d in h.store.decisions()] == ["ana (web)"]
    browser.refresh()
    assert not browser.find_elements(By.ID, f"row-{copy.id}")


def test_keyboard_c_confirms_the_current_item(page):
    h, browser, base = page
    rows = seed_pairs(h)
    first = rows[str(h.root / "shop-item-copy.jpg")]
    log_in(browser, base)
    browser.find_element(By.TAG_NAME, "body").send_keys("c")
    wait_until(lambda: h.store.decisions(), timeout=10, what="the decision")
    (decision,) = h.store.decisions()
    assert decision.decision == Decision.CONFIRMED and decision.row_id == first.id
    assert h.verdicts()[str(h.root / "shop-item-copy.jpg")].status == Status.DUPLICATE  # confirmed: unchanged


def test_quarantine_the_other_moves_the_matched_file(page):
    h, browser, base = page
    original = write_image(h.root / "first.jpg", seed=5, size=(320, 240))
    h.upsert(original)
    h.upsert(copy_later(original, h.root / "second.jpg"))
    rows = h.verdicts()
    log_in(browser, base)
    item = browser.find_element(By.ID, f"row-{rows[str(h.root / 'second.jpg')].id}")
    item.find_element(By.XPATH, ".//button[text()='Quarantine the other']").click()
    wait_until(lambda: not original.exists(), timeout=10, what="the original to be moved")
    assert (h.root / "second.jpg").exists()
    assert (Path(h.config.quarantine.dir) / "first.jpg").read_bytes() == (h.root / "second.jpg").read_bytes()
    # The file moves before the answer reaches the page: wait for the page to say so, too.
    wait_until(lambda: "quarantined" in browser.find_element(By.ID, "said").text, timeout=10,
               what="the page to report the quarantine")


def test_undo_from_the_history_brings_the_verdict_back(page):
    h, browser, base = page
    rows = seed_pairs(h)
    copy = rows[str(h.root / "holiday (1).jpg")]
    log_in(browser, base)
    dismiss_by_click(browser, copy.id)
    wait_until(lambda: h.verdicts()[str(h.root / "holiday (1).jpg")].status == Status.OK, timeout=10,
               what="the dismissal")
    browser.get(base + "/history")
    (entry,) = h.store.history(None, 10)
    browser.find_element(By.CSS_SELECTOR, f"button[data-undo='{entry.id}']").click()
    wait_until(lambda: h.verdicts()[str(h.root / "holiday (1).jpg")].status == Status.DUPLICATE, timeout=10,
               what="the verdict to come back")
    assert h.store.decisions() == []
    browser.get(base + "/")
    assert browser.find_elements(By.ID, f"row-{copy.id}")


def test_the_calibration_page_suggests_a_threshold_from_the_decisions(page):
    h, browser, base = page
    seed(h.store, confirmed=30, dismissed=30)
    log_in(browser, base)
    browser.get(base + "/calibrate")
    section = browser.find_element(By.CSS_SELECTOR, "section[data-key='duplicates.threshold']")
    suggested = section.find_element(By.CLASS_NAME, "suggested").text
    expected = calibrate(from_decisions(h.store.decisions(), Status.DUPLICATE), "duplicates.threshold", 0.97,
                         h.config.calibration.target_precision).suggested
    assert suggested == f"duplicates.threshold = {expected}" and expected is not None
    assert len(section.find_elements(By.CSS_SELECTOR, "svg.chart rect")) > 0
    prohibited = browser.find_element(By.CSS_SELECTOR, "section[data-key='prohibited.image_threshold']")
    assert "20 more confirmed and 20 more dismissed" in prohibited.find_element(By.CLASS_NAME, "needs").text
    copies = browser.find_element(By.CSS_SELECTOR, "section[data-key='duplicates.pdq_distance']")  # no files: none
    assert "20 more confirmed and 20 more dismissed" in copies.find_element(By.CLASS_NAME, "needs").text
    if os.environ.get("CLIPWATCH_SCREENSHOT"):
        browser.save_screenshot(os.environ["CLIPWATCH_SCREENSHOT"].replace(".png", "-calibrate.png"))
