"""The web page at ``/`` in a real browser (Playwright driving Debian's chromium): upload a photo, read the verdict
and the stability block, toggle the heatmap, read the edited-region verdict and overlay its map (the shipped
localizer) at two opacities; the screenshot is kept as a test artifact."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from live_server import live_server  # noqa: E402

from synthdet.detectors.detector import Detector  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


@pytest.fixture(scope="module")
def url(default_detector: Detector) -> Iterator[str]:
    from synthdet.localization.graph import open_localizer

    with live_server(default_detector, localizer=open_localizer()) as u:  # as `synthdet serve` loads it
        yield u


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_upload_verdict_stability_heatmap(url: str, browser, tmp_path: Path) -> None:
    from synthdet.data.demo import demo_data_dir

    # a real photo: ../shared's, else a packaged demo one (a synthetic pattern gives the localizer an empty map)
    photos = sorted((SHARED_DEV / "real").glob("*.JPEG"))[:1] or sorted((demo_data_dir() / "real").glob("*.jp*g"))[:1]
    photo = photos[0]
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(r.url))
    page.goto(url + "/")
    assert page.locator("#detector").inner_text(timeout=30_000).startswith("Detector ")
    page.set_input_files("#file", str(photo))
    verdict = page.locator("#verdict")
    verdict.wait_for(state="visible", timeout=60_000)
    assert verdict.get_attribute("data-verdict") in ("likely generated", "likely real", "uncertain")
    assert verdict.inner_text() in ("Likely generated", "Likely real", "Uncertain — here is why")
    assert page.locator("#reasons li").count() >= 1
    rows = page.locator("#stability tbody tr")
    assert rows.count() == 4  # as uploaded + the three checks apart (the page asks for checks=full)
    assert "JPEG re-encode at quality 75" in rows.nth(1).inner_text()
    assert page.locator("#evidence tbody tr").count() == 5
    assert "JPEG" in page.locator("#evidence").inner_text()
    toggle = page.locator("#heatmap-toggle")
    assert toggle.is_enabled()
    assert not page.locator("#overlay").is_visible()
    toggle.check()
    assert page.locator("#overlay").is_visible()
    # the overlay really was drawn: its pixels are not all transparent
    drawn = page.evaluate("() => { const c = document.getElementById('overlay'); const d = c.getContext('2d')"
                          ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
                          " n += d[i] > 0; return [c.width, n]; }")
    assert drawn[0] > 50 and drawn[1] > 1000
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    toggle.uncheck()
    assert not page.locator("#overlay").is_visible()
    sync_api.expect(page.locator("#map-toggle")).to_be_enabled(timeout=60_000)  # the Task B map has arrived
    loc = page.locator("#loc-verdict")
    assert loc.get_attribute("data-verdict") in ("likely edited", "no edit found")
    assert loc.inner_text().startswith(("Likely edited: a region of about", "No edit found: nothing in the map"))
    assert "of the pixels flagged" in page.locator("#loc-note").inner_text()
    assert not page.locator("#locmap").is_visible()
    page.locator("#map-toggle").check()
    assert page.locator("#locmap").is_visible()
    drawn = page.evaluate("() => { const c = document.getElementById('locmap'), i = document.getElementById('preview');"
                          " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
                          " for (let k = 3; k < d.length; k += 4) n += d[k] > 0;"
                          " return [c.width === i.clientWidth, c.height === i.clientHeight, n, c.style.opacity]; }")
    assert drawn[0] and drawn[1] and drawn[2] > 0 and drawn[3] == "0.65"  # over the picture, at its size
    page.locator("#map-opacity").fill("30")
    assert page.evaluate("() => document.getElementById('locmap').style.opacity") == "0.3"
    page.locator("#map-toggle").uncheck()
    assert not page.locator("#locmap").is_visible()
    page.set_input_files("#file", str(write_image(tmp_path / "fake.jpg", None, fmt="PNG")))  # content, not name
    sync_api.expect(page.locator("#evidence")).to_contain_text("PNG", timeout=60_000)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image at all")
    page.set_input_files("#file", str(bad))
    sync_api.expect(page.locator("#error")).to_contain_text("not-an-image", timeout=30_000)
    assert not errors, errors
    page.close()


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_drop_and_paste(url: str, browser, how: str) -> None:
    """A PNG made in the page from a canvas, dropped on the drop zone or pasted: it is scored."""
    page = browser.new_page()
    page.goto(url + "/")
    page.evaluate("""async (how) => {
        const c = document.createElement('canvas'); c.width = 160; c.height = 120;
        const g = c.getContext('2d'); g.fillStyle = '#3a7'; g.fillRect(0, 0, 160, 120);
        g.fillStyle = '#c33'; g.beginPath(); g.arc(80, 60, 40, 0, 7); g.fill();
        const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
        const dt = new DataTransfer(); dt.items.add(new File([blob], 'drawn.png', { type: 'image/png' }));
        if (how === 'drop') document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt }));
        else document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt }));
    }""", how)
    sync_api.expect(page.locator("#evidence")).to_contain_text("PNG", timeout=60_000)
    assert page.locator("#meta").inner_text().startswith("160×120 px")
    page.close()


def test_docs_render_offline(url: str, browser) -> None:
    """Swagger UI at /docs from packaged files: every request the page makes stays on the server."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(url + "/docs")
    sync_api.expect(page.locator("body")).to_contain_text("/v1/score/batch", timeout=30_000)
    assert requested and all(r.startswith(url) for r in requested), requested
    page.close()
