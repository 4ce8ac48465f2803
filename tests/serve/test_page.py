"""The page at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright's client pointed at it
with `executable_path`): choose a scan, read the class and probabilities from the page; a bad file shows the
server's reason; nothing is fetched from anywhere but the server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.runtime.models import CLASSES, save_quadrant

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra's browser driver) is missing")

BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_MS = 30_000


def _browser_path() -> str | None:
    return os.environ.get("TUMOR_EDGE_CHROMIUM") or next(
        (found for name in BROWSER_CANDIDATES if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    path = _browser_path()
    if path is None:
        pytest.skip("no Chromium installed: `apt-get install -y chromium` (Debian) or set TUMOR_EDGE_CHROMIUM")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, timeout=TIMEOUT_MS,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The browser logs every non-2xx fetch; the bad-file test's 422 is expected, anything else is an error.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 422" not in m.text
            else None)
    page.goto(server.url + "/")
    yield page
    context.close()
    assert all(url.startswith(server.url + "/") or url.startswith(("blob:", "data:")) for url in requests), requests
    assert errors == [], errors  # no script error, no CSP violation


def test_choose_a_scan_and_read_the_result(page, tmp_path):
    assert "not a diagnostic device" in page.locator("#notice").inner_text()
    scan = save_quadrant(tmp_path / "scan-q2.png", 2)
    page.set_input_files("#choose", str(scan))
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#label").inner_text() == CLASSES[2]
    assert page.locator("#file").inner_text() == "scan-q2.png"
    rows = page.locator("tr.prob")
    assert rows.count() == len(CLASSES)
    assert rows.first.get_attribute("data-cls") == CLASSES[2]  # most likely first
    shown = float(rows.first.locator("td.num").inner_text())
    assert shown > 0.9
    page.wait_for_selector("#figure:not([hidden])")  # the preview of the chosen scan


def test_a_bad_file_shows_the_reason(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    page.set_input_files("#choose", str(bad))
    sync_api.expect(page.locator("#error")).to_have_text("broken.png: not an image file Pillow can read",
                                                         timeout=TIMEOUT_MS)
    assert page.locator("#result").is_hidden()


def test_drop_a_scan_on_the_box(page, tmp_path):
    scan: Path = save_quadrant(tmp_path / "dropped.png", 0)
    data = list(scan.read_bytes())
    page.evaluate("""(bytes) => {
        const file = new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'});
        const dt = new DataTransfer(); dt.items.add(file);
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#label").inner_text() == CLASSES[0]


def test_a_heatmap_in_the_response_is_drawn_over_the_scan(page):
    """The page's renderer is fed a response that carries a map (rows of cells, as the API sends it) and must
    show the overlay."""
    heatmap = [[0.0, 0.5], [1.0, 0.25]]
    page.evaluate("(h) => render({file: 'x.png', label: 'glioma', confidence: 0.9, heatmap: h, warnings: ['ood'],"
                  " probabilities: {glioma: 0.9, meningioma: 0.05, notumor: 0.03, pituitary: 0.02}})", heatmap)
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.evaluate("document.getElementById('heatmap').width") > 0
    assert page.locator("#warnings li").first.inner_text() == "ood"


def test_a_form_on_another_sites_page_cannot_post_to_the_server(browser, server, tmp_path):
    """A page served from another origin (this host, another port) posts a scan as a multipart form to the
    tokenless server, as any page the user opens could (no CORS preflight for a form; the page cannot read the
    answer, but the server would do the work): the browser's own Origin and Sec-Fetch-Site headers get it refused
    (403) before any inference."""
    import base64
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    scan = base64.b64encode(save_quadrant(tmp_path / "scan.png", 1).read_bytes()).decode()
    (tmp_path / "evil.html").write_text(
        f'<script>const bytes = Uint8Array.from(atob("{scan}"), c => c.charCodeAt(0));'
        'const form = new FormData(); form.append("file", new Blob([bytes]), "scan.png");'
        f'fetch("{server.url}/v1/classify", {{method: "POST", body: form, mode: "no-cors"}});</script>')
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        with page.expect_response(lambda r: r.url.endswith("/v1/classify"), timeout=TIMEOUT_MS) as answer:
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/evil.html")
        assert answer.value.status == 403  # the body is opaque to a no-cors page (and to its driver)
    finally:
        context.close()
        other.shutdown()
        other.server_close()
