"""``synthdet serve`` over real HTTP: uvicorn on a loopback port, httpx clients, the shipped default detector.

Every endpoint, every hostile input with its specific status and reason (and the server still serving afterwards),
500 concurrent requests against a queue of 8, micro-batching, API key and timeout."""

from __future__ import annotations

import asyncio
import io
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_image, synthetic_photo
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from live_server import live_server  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from synthdet.detectors.assess import assess_image  # noqa: E402
from synthdet.detectors.detector import Detector  # noqa: E402
from synthdet.serve import Settings, is_loopback, run  # noqa: E402

MB = 1024 * 1024


@pytest.fixture(scope="module")
def det(default_detector: Detector) -> Detector:
    return default_detector


@pytest.fixture(scope="module")
def url(det: Detector) -> Iterator[str]:
    # one loopback address stands in for many clients here (500 concurrent ones below): no per-address cap
    with live_server(det, max_body_bytes=2 * MB, max_pixels=4_000_000, queue_size=8,
                     max_connections_per_client=4096) as u:
        yield u


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode_image(synthetic_photo(128, 96, seed=4), "JPEG", quality=88)


def test_score_multipart_and_raw_body(url: str, det: Detector, photo: bytes) -> None:
    expected = assess_image(det, photo)
    multipart = httpx.post(f"{url}/v1/score", files={"file": ("holiday.jpg", photo, "image/jpeg")}, timeout=60)
    raw = httpx.post(f"{url}/v1/score", content=photo, headers={"content-type": "application/octet-stream"},
                     timeout=60)
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert body["verdict"] == expected.verdict and body["threshold"] == pytest.approx(det.threshold)
        assert [c["name"] for c in body["checks"]] == ["reshare"]  # the default: one re-shared copy
        assert body["evidence"]["jpeg"]["quality"] == 88
        assert "camera" in body["evidence"]["exif"]  # the name the page shows, computed once by the library
        assert body["heatmap"] is None
        assert {"decode", "queue", "score", "total"} <= set(body["timings_ms"])
    assert multipart.json()["name"] == "holiday.jpg" and raw.json()["name"] == "<body>"
    assert multipart.headers["x-content-type-options"] == "nosniff"


def test_heatmap_and_check_settings(url: str, det: Detector, photo: bytes) -> None:
    r = httpx.post(f"{url}/v1/score?heatmap=true&checks=false", content=photo, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert np.array(body["heatmap"]["scores"]).shape == (3, 3) and body["checks"] == []
    full = httpx.post(f"{url}/v1/score?checks=full", content=photo, timeout=60).json()
    expected = assess_image(det, photo, checks="full")
    assert [c["name"] for c in full["checks"]] == ["jpeg75", "resize0.5", "crop"]
    assert max(abs(c["probability"] - e.probability) for c, e in zip(full["checks"], expected.checks)) <= 1e-6
    assert httpx.post(f"{url}/v1/score?checks=off", content=photo, timeout=60).json()["checks"] == []
    bad = httpx.post(f"{url}/v1/score?checks=most", content=photo, timeout=60)
    assert bad.status_code == 422 and bad.json()["error"]["reason"] == "bad-checks"


def test_batch(url: str, photo: bytes) -> None:
    png = encode_image(synthetic_photo(80, 80, seed=9), "PNG")
    files = [("files", ("a.jpg", photo)), ("files", ("b.png", png)), ("files", ("c.jpg", b"GIF89a not really"))]
    r = httpx.post(f"{url}/v1/score/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    a, b, c = r.json()["results"]
    assert (a["name"], b["name"], b["evidence"]["format"]) == ("a.jpg", "b.png", "PNG")
    assert (c["name"], c["status"], c["error"]["reason"]) == ("c.jpg", 415, "not-an-image")
    two = httpx.post(f"{url}/v1/score", files=files[:2], timeout=60)
    assert two.status_code == 400 and two.json()["error"]["reason"] == "too-many-files"


def test_detector_health_metrics_docs_localize(url: str, det: Detector) -> None:
    card = httpx.get(f"{url}/v1/detector").json()
    assert card["threshold"] == pytest.approx(det.threshold) and card["card"]["backbone"] == det.card.backbone
    assert card["band_source"] == ("card" if "uncertain_band" in det.card.data else "default, not calibrated")
    assert len(card["band"]) == 2
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["detector"] == card["id"]
    loc = httpx.post(f"{url}/v1/localize", content=b"x")
    assert loc.status_code == 501 and loc.json()["error"]["reason"] == "no-localizer"
    assert "/v1/score" in httpx.get(f"{url}/openapi.json").json()["paths"]
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "https://" not in docs.text
    assert httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{url}/docs-assets/..%2F..%2Fsetup.py").status_code == 404
    text = httpx.get(f"{url}/metrics").text
    for name in ("synthdet_requests_total", "synthdet_request_duration_seconds_bucket", "synthdet_queue_depth",
                 "synthdet_errors_total", "synthdet_batch_requests"):
        assert name in text, name
    assert 'synthdet_errors_total{reason="no-localizer"}' in text


def test_page_is_self_contained(url: str) -> None:
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    assert "<script" in page and "/v1/score" in page
    assert "http://" not in page and "https://" not in page and "src=\"//" not in page  # no CDN, no external asset


def _bomb() -> bytes:
    """A 6000x6000 PNG of one colour: 36 Mpx of pixels in a few kilobytes."""
    return encode_image(Image.new("L", (6000, 6000), 128), "PNG", optimize=True)


@pytest.mark.parametrize(("name", "make", "status", "reason"), [
    ("zero bytes", lambda: b"", 400, "empty-file"),
    ("truncated JPEG", lambda: encode_image(synthetic_photo(256, 192), "JPEG")[:2000], 422, "truncated"),
    ("text named .jpg", lambda: b"Dear diary, today I uploaded a text file called photo.jpg.", 415, "not-an-image"),
    ("decompression bomb", _bomb, 413, "too-large"),
    ("oversize body", lambda: b"\xff\xd8" + bytes(3 * MB), 413, "body-too-large"),
    ("PostScript (Ghostscript)", lambda: encode_image(synthetic_photo(64, 48), "EPS"), 415, "not-an-image"),
    ("PDF", lambda: encode_image(synthetic_photo(64, 48), "PDF"), 415, "not-an-image"),
])
def test_hostile_inputs(url: str, photo: bytes, name: str, make, status: int, reason: str) -> None:
    data = make()
    for r in (httpx.post(f"{url}/v1/score", files={"file": ("photo.jpg", data, "image/jpeg")}, timeout=60),
              httpx.post(f"{url}/v1/score", content=data, timeout=60)):
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"]["reason"] == reason
        assert "Ghostscript" not in r.text and "Traceback" not in r.text  # no internals
    assert httpx.post(f"{url}/v1/score", content=photo, timeout=60).status_code == 200  # still serving


def test_metrics_labels_stay_bounded_and_every_refusal_has_one_shape(url: str, det: Detector) -> None:
    """A scanner's made-up paths neither grow ``/metrics`` (the label is the route, or ``other``) nor get another
    error shape: 404, 405 and an invalid parameter answer ``{"error": {"reason", "detail"}}`` like every refusal."""
    with httpx.Client(timeout=30) as client:
        before = len(client.get(f"{url}/metrics").text)
        for i in range(300):
            r = client.get(f"{url}/v1/made-up-{i}")
            assert r.status_code == 404 and r.json()["error"]["reason"] == "not-found", r.text
        text = client.get(f"{url}/metrics").text
        assert "made-up" not in text and len(text) < before + 2000
        assert 'endpoint="other",status="404"' in text
        wrong = client.get(f"{url}/v1/score")
        assert wrong.status_code == 405 and wrong.json()["error"]["reason"] == "method-not-allowed"
        bad = client.post(f"{url}/v1/score?heatmap=maybe", content=b"x")
        assert bad.status_code == 422 and bad.json()["error"]["reason"] == "invalid-parameter"
        assert "heatmap" in bad.json()["error"]["detail"]


def test_oversize_chunked_body(url: str, photo: bytes) -> None:
    """No Content-Length: the limit is enforced while reading."""
    def chunks() -> Iterator[bytes]:
        for _ in range(6):
            yield bytes(MB // 2)

    r = httpx.post(f"{url}/v1/score", content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["reason"] == "body-too-large"
    assert Settings().max_body_bytes == 25 * MB


def test_500_concurrent_requests_against_a_queue_of_8(url: str, photo: bytes) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    small = encode_image(synthetic_photo(64, 48, seed=1), "JPEG")

    async def storm() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/score?checks=false", content=small)
                                          for _ in range(500)))

    responses = asyncio.run(storm())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(200) >= 8 and codes.count(503) >= 1, (codes.count(200), codes.count(503))
    refused = [r for r in responses if r.status_code == 503]
    reasons = {r.json()["error"]["reason"] for r in refused}
    assert reasons <= {"queue-full", "overloaded"} and all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert httpx.get(f"{url}/healthz").json()["in_progress"] == 0
    assert httpx.post(f"{url}/v1/score", content=photo, timeout=60).status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert any(f'synthdet_errors_total{{reason="{r}"}}' in text for r in reasons)


def test_micro_batching_gathers_concurrent_requests(det: Detector) -> None:
    small = encode_image(synthetic_photo(64, 48, seed=2), "JPEG")
    with live_server(det, max_batch=8, max_wait_ms=1500) as u:
        lone = httpx.post(f"{u}/v1/score?checks=false", content=small, timeout=60)
        assert lone.status_code == 200 and lone.json()["timings_ms"]["queue"] < 1000  # nothing to wait for
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(f"{u}/v1/score?checks=false", content=small)
                                              for _ in range(8)))

        assert all(r.status_code == 200 for r in asyncio.run(burst()))
        text = httpx.get(f"{u}/metrics").text
    count = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("synthdet_batch_requests_count")))
    assert count < 8  # 8 requests in fewer forward passes


def test_api_key_and_timeout(det: Detector, photo: bytes) -> None:
    with live_server(det, api_key="s3cret", timeout_s=0.001) as u:
        assert httpx.post(f"{u}/v1/score", content=photo).status_code == 401
        assert httpx.get(f"{u}/metrics").status_code == 401
        assert httpx.get(f"{u}/healthz").status_code == 200
        r = httpx.post(f"{u}/v1/score", content=photo, headers={"x-api-key": "s3cret"}, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["reason"] == "timeout"
        assert httpx.get(f"{u}/healthz").json()["in_progress"] == 0
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="API key"):
        run(det, host="0.0.0.0", port=1)


def test_cli_refuses_open_bind_without_key() -> None:
    from synthdet.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--host", "0.0.0.0"], env={"SYNTHDET_API_KEY": ""})
    assert res.exit_code == 2 and "api-key" in res.output
    res = runner.invoke(app, ["serve", "--localizer", "."])
    assert res.exit_code == 2 and "card.json" in res.output  # not a localizer folder: refused before serving


def test_a_second_server_on_a_busy_port_fails_before_loading_the_model(url: str) -> None:
    """The port is checked first: no model load, no "startup complete", one line and exit 2."""
    import subprocess
    import sys
    import time

    port = url.rsplit(":", 1)[1]
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "synthdet.cli", "serve", "--port", port], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "is in use" in res.stderr and "startup complete" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and time.monotonic() - start < 30


def test_serve_loads_the_shipped_localizer_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``synthdet serve`` with no --localizer hands the shipped one to the app (so /v1/localize answers 200, below);
    --no-localizer serves without one."""
    import synthdet.serve
    from synthdet.cli import app
    from synthdet.localization.graph import GraphLocalizer
    from synthdet.localization.models import Localizer

    given: list = []
    monkeypatch.setattr(synthdet.serve, "run", lambda det, **kw: given.append(kw["localizer"]))
    runner = CliRunner()
    assert runner.invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--port", "0", "--no-localizer"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--port", "0", "--runtime", "torch"]).exit_code == 0
    assert isinstance(given[0], GraphLocalizer) and given[1] is None  # auto: the shipped graph, no torch needed
    assert isinstance(given[2], Localizer)


def test_localize_returns_the_mask_at_the_image_size_and_the_decision(det: Detector) -> None:
    """With the shipped Task B localizer: PNG and float16 .npz maps at the upload's own size, the image-level
    decision in headers (in words too), the localizer's own numbers; bad input keeps its status codes."""
    from synthdet.localization.models import load_localizer

    loc = load_localizer()
    photo = synthetic_photo(120, 90, seed=4)
    with live_server(det, localizer=loc) as url:
        png = httpx.post(f"{url}/v1/localize", files={"file": ("a.png", encode_image(photo, "PNG"))})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        mask = np.asarray(Image.open(io.BytesIO(png.content)))
        assert mask.shape == (90, 120) and mask.dtype == np.uint8
        npz = httpx.post(f"{url}/v1/localize?format=npz", content=encode_image(photo, "PNG"))
        prob = np.load(io.BytesIO(npz.content))["mask"]
        assert prob.dtype == np.float16 and prob.shape == (90, 120)
        expected = loc.predict_image(photo)
        assert np.abs(prob.astype(np.float32) - expected).max() < 2e-3  # the localizer's own map
        assert np.abs(mask.astype(np.float32) / 255 - expected).max() <= 1 / 255 + 1e-6
        score = float(npz.headers["x-image-score"])
        assert score == pytest.approx(loc.score_map(expected), abs=1e-5)
        assert npz.headers["x-manipulated"] == ("true" if score >= loc.card.threshold else "false")
        assert npz.headers["x-verdict"] == ("likely edited" if score >= loc.card.threshold else "no edit found")
        assert 0 <= float(npz.headers["x-largest-region"]) <= float(npz.headers["x-coverage"]) <= 1
        assert httpx.get(f"{url}/v1/detector").json()["localizer"]["image_score"] == "learned"
        assert httpx.post(f"{url}/v1/localize", content=b"").status_code == 400
        assert httpx.post(f"{url}/v1/localize", content=b"not an image at all").status_code == 415
        assert httpx.post(f"{url}/v1/localize?format=tiff", content=b"x").status_code == 400


def test_pixels_bomb_png_is_small() -> None:
    """The bomb input really is small on the wire and large in pixels (the test above means something)."""
    data = _bomb()
    assert len(data) < 200_000
    with Image.open(io.BytesIO(data)) as img:
        assert img.size[0] * img.size[1] > 4_000_000


def test_slow_senders_hold_no_queue_slot_and_are_cut_off(det: Detector, photo: bytes) -> None:
    """The body is read before admission, within its own deadline: clients trickling their uploads (more of them
    than the queue has slots) cannot starve a normal request, and each ends with 408 when its deadline passes."""
    import threading
    import time

    def trickle() -> Iterator[bytes]:
        for i in range(0, len(photo), len(photo) // 8 + 1):
            time.sleep(0.5)
            yield photo[i:i + len(photo) // 8 + 1]

    with live_server(det, queue_size=2, body_timeout_s=2.0, timeout_s=30) as u:
        slow: list[httpx.Response] = []
        senders = [threading.Thread(target=lambda: slow.append(httpx.post(f"{u}/v1/score?checks=false",
                                                                          content=trickle(), timeout=60)))
                   for _ in range(6)]
        for t in senders:
            t.start()
        time.sleep(0.8)  # every slow sender is mid-upload
        start = time.monotonic()
        fast = httpx.post(f"{u}/v1/score?checks=false", content=photo, timeout=60)
        assert fast.status_code == 200 and time.monotonic() - start < 1.5, fast.text
        for t in senders:
            t.join(timeout=30)
        assert [r.status_code for r in slow] == [408] * 6
        assert {r.json()["error"]["reason"] for r in slow} == {"body-timeout"}
        assert httpx.get(f"{u}/healthz").json()["in_progress"] == 0


def test_silent_or_trickled_heads_are_closed_and_one_address_is_capped(det: Detector) -> None:
    """A connection that sends no complete request head within the deadline is closed (half-open sockets and
    headers at 1 byte/s hold nothing); one address's connections beyond the cap are closed at once."""
    import socket
    import time

    def closed_within(sock: socket.socket, seconds: float) -> bool:
        sock.settimeout(seconds)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    with live_server(det, head_timeout_s=1.0, max_connections_per_client=4) as u:
        host, port = u.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)))
        trickled = socket.create_connection((host, int(port)))
        for byte in b"GET /healthz HTTP/1.1\r\n":
            trickled.sendall(bytes([byte]))
            time.sleep(0.05)
            if byte == ord("/"):
                break
        extra = [socket.create_connection((host, int(port))) for _ in range(3)]  # 5 open from one address
        assert closed_within(extra[-1], 0.5)  # the fifth: over the cap of 4, closed at once
        assert not closed_within(silent, 0.1)  # the first four wait for their heads
        assert closed_within(silent, 2.0) and closed_within(trickled, 2.0)
        for sock in (silent, trickled, *extra):
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{u}/healthz", timeout=10).status_code == 200  # a complete head is served


def test_overload_is_refused_with_503_before_work_not_504_after(det: Detector, photo: bytes) -> None:
    """With more work queued than the timeout allows (full checks: four forward passes a request), requests are
    refused at once with 503 + Retry-After from the service's own cost estimate, instead of timing out with 504."""

    async def storm(u: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{u}/v1/score?checks=full", content=photo)
                                          for _ in range(24)))

    with live_server(det, timeout_s=2.0, queue_size=64) as u:
        codes = [r.status_code for r in asyncio.run(storm(u))]
        assert codes.count(200) >= 1 and codes.count(503) >= 8, codes
        assert codes.count(504) <= codes.count(503) // 4, codes  # refusals come before the work, not after
        assert httpx.get(f"{u}/healthz").json()["in_progress"] == 0


def test_large_upload_never_touches_the_disk(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.5 MB multipart upload (starlette spools parts over 1 MB to a temporary file) is parsed in memory: any
    temporary file created meanwhile is recorded, and none may be."""
    import tempfile

    created: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)
        monkeypatch.setattr(tempfile, name, lambda *a, _n=name, _r=real, **k: (created.append(_n), _r(*a, **k))[1])
    noise = np.random.default_rng(0).integers(0, 256, (720, 720, 3), dtype=np.uint8)
    big = encode_image(Image.fromarray(noise), "PNG")
    assert 1 * MB < len(big) < 2 * MB
    r = httpx.post(f"{url}/v1/score?checks=false", files={"file": ("big.png", big, "image/png")}, timeout=120)
    assert r.status_code == 200 and r.json()["width"] == 720
    assert created == []


def _paletted_png(w: int, h: int) -> bytes:
    """A paletted PNG of one colour index: ``w × h`` pixels in a few kilobytes (decoded: 1 byte a pixel, then 3 as RGB)."""
    img = Image.new("P", (w, h), 7)
    img.putpalette([(i * 37) % 256 for i in range(768)])
    return encode_image(img, "PNG", optimize=True)


def test_a_batch_is_bounded_by_its_pixels_before_anything_is_decoded(det: Detector,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Three 4-Mpx files against a 10-Mpx request budget: 413 ``too-many-pixels`` in the documented shape, counted
    from the headers, and no file reaches the decoder; two of them are served."""
    import synthdet.serve.app as app_module

    decoded: list[str] = []
    real = app_module.prepare
    monkeypatch.setattr(app_module, "prepare", lambda *a, **k: decoded.append(k["name"]) or real(*a, **k))
    four = _paletted_png(2000, 2000)
    files = [("files", (f"p{i}.png", four, "image/png")) for i in range(3)]
    with live_server(det, max_pixels=5_000_000, max_request_pixels=10_000_000) as u:
        r = httpx.post(f"{u}/v1/score/batch?checks=false", files=files, timeout=60)
        assert r.status_code == 413 and r.json()["error"]["reason"] == "too-many-pixels", r.text
        assert "12,000,000 px" in r.json()["error"]["detail"] and decoded == []
        ok = httpx.post(f"{u}/v1/score/batch?checks=false", files=files[:2], timeout=60)
        assert ok.status_code == 200 and [x["width"] for x in ok.json()["results"]] == [2000, 2000]
    assert sorted(decoded) == ["p0.png", "p1.png"]


def test_the_memory_of_a_large_image_goes_back_to_the_os(det: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 48-Mpx upload (48 MB of palette and 144 MB of RGB when decoded): the process's RSS afterwards is no higher
    than before it (glibc kept 16-35 MB of it in its arenas for good before ``malloc_trim``); an ordinary photo
    costs no trim."""
    import synthdet.serve.budget as budget

    status = Path("/proc/self/status")
    if not status.exists() or not budget.release_memory():
        pytest.skip("needs Linux with glibc")

    def rss_mb() -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    trims: list[bool] = []
    real = budget.release_memory
    monkeypatch.setattr(budget, "release_memory", lambda: trims.append(real()) or True)
    photo = encode_image(synthetic_photo(1200, 900, seed=5), "JPEG")
    big = _paletted_png(8000, 6000)
    with live_server(det, max_pixels=50_000_000) as u:
        for _ in range(2):  # the 384-px forward pass and its buffers exist before the baseline
            assert httpx.post(f"{u}/v1/score", content=photo, timeout=60).status_code == 200
        assert trims == []
        before = rss_mb()
        r = httpx.post(f"{u}/v1/score", content=big, timeout=120)
        after = rss_mb()
    assert r.status_code == 200 and r.json()["width"] == 8000
    assert trims == [True]
    assert after < before + 8, (before, after)


def test_serve_defaults_bound_pixels_and_the_cli_agrees() -> None:
    import inspect

    from synthdet.cli.serve import serve

    params = inspect.signature(serve).parameters
    assert params["max_pixels"].default == Settings().max_pixels == 50_000_000
    assert params["max_request_pixels"].default == Settings().max_request_pixels == 100_000_000
