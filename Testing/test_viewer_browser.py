"""``covidseg view`` in a real browser: headless Chromium drives the app served on a loopback port.

Chromium is driven through its DevTools protocol (a websocket on 127.0.0.1, spoken with aiohttp, which trame brings).
Every wait is bounded in count and time; the server is started with --timeout so it stops by itself once the browser
has gone, and is terminated at the end in any case.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_ROOT, colour_mask

pytest.importorskip("slicer")
pytest.importorskip("torch")
try:  # ImportError, not only ModuleNotFoundError: trame-slicer without slicer-layer-dm fails on a missing name
    import trame_slicer.views  # noqa: F401
except ImportError as error:
    pytest.skip(f"needs the view extra (trame-slicer with slicer-layer-dm): {error}", allow_module_level=True)
aiohttp = pytest.importorskip("aiohttp")

from CovidSegLib.labels import LABELS_BY_VALUE, LEFT_LUNG, RIGHT_LUNG  # noqa: E402
from CovidSegView.render import offscreen_rendering_problem  # noqa: E402

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
PROBLEM = offscreen_rendering_problem()
pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (scripts/test.sh installs it with apt-get)"),
    pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or ""),
]
LEFT, RIGHT = LABELS_BY_VALUE[LEFT_LUNG].color, LABELS_BY_VALUE[RIGHT_LUNG].color


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.25):
    """Poll ``predicate`` until it returns something truthy: at most ``timeout_s`` and ``timeout_s / interval_s``
    tries, then fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start_server(ct: Path, reference: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``covidseg view`` from this checkout on a free loopback port; returns the process and its URL."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    command = [sys.executable, "-m", "CovidSegLib", "view", str(ct), "--reference", str(reference),
               "--port", "0", "--timeout", "20", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def url() -> str | None:
        if process.poll() is not None:
            output = log.read_text(encoding="utf-8")[-3000:]
            raise AssertionError(f"covidseg view exited with {process.returncode}:\n{output}")
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", log.read_text(encoding="utf-8"))
        return found.group(1) if found else None

    return process, wait_for(url, 180, "covidseg view to listen")


class DevTools:
    """The few DevTools protocol calls the test needs, on one page; each reply awaited at most ``timeout_s``."""

    def __init__(self, websocket, timeout_s: float = 60) -> None:
        self.websocket, self.timeout_s, self.next_id = websocket, timeout_s, 0
        self.requested: list[str] = []

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.websocket.send_json({"id": self.next_id, "method": method, "params": params})
        deadline = time.monotonic() + self.timeout_s
        for _ in range(100_000):  # events arrive between replies; bounded in count as well as time
            message = await self.websocket.receive_json(timeout=max(deadline - time.monotonic(), 0.01))
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
        raise AssertionError(f"no reply to {method}")

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_js(self, expression: str, timeout_s: float, what: str, interval_s: float = 0.25):
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / interval_s) + 1):
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    async def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Headless Chromium with a fresh profile, its DevTools on a free loopback port; returns it and the page's
    websocket address."""
    import urllib.request

    process = subprocess.Popen(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1500,950", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    port = wait_for(lambda: port_file.is_file() and port_file.read_text(encoding="utf-8").split("\n")[0], 60,
                    "Chromium's DevTools")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
        pages = [t for t in json.load(answer) if t["type"] == "page"]
    return process, pages[0]["webSocketDebuggerUrl"]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


TEXT = "(document.getElementById({!r})?.innerText ?? '')"


def click(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).click()"


def type_into(element_id: str, text: str) -> str:
    """Set an input's value the way typing does, so Vue's v-model (and the server's state) follows."""
    return (f"(() => {{ const e = document.getElementById({element_id!r}); e.value = {json.dumps(text)}; "
            "e.dispatchEvent(new Event('input', {bubbles: true})); return true; })()")


def table(element_id: str) -> str:
    return (f"Array.from(document.querySelectorAll('#{element_id} tr'))"
            ".map(r => Array.from(r.children).map(c => c.innerText.trim()))")


async def drive(websocket_url: str, app_url: str, out_dir: Path, artefacts: Path) -> dict:
    """Open the page, Segment and Cancel, Segment, Quantify, Compare, Save; return what the page showed."""
    async with aiohttp.ClientSession() as session, session.ws_connect(websocket_url, max_msg_size=0) as websocket:
        page = DevTools(websocket)
        await page.call("Network.enable")
        await page.call("Page.enable")
        await page.call("Page.navigate", url=app_url)
        await page.wait_js("!!document.getElementById('open')", 60, "the page to load")
        ct_path = await page.js("document.getElementById('ct-path').value")
        await page.js(type_into("ct-path", "no-such-ct.nrrd"))
        await asyncio.sleep(0.5)
        await page.js(click("open"))
        await page.wait_js(f"{TEXT.format('error')}.includes('no-such-ct.nrrd')", 60, "the bad path's error")
        bad_path_error = await page.js(TEXT.format("error"))
        await page.js(type_into("ct-path", ct_path))
        await asyncio.sleep(0.5)
        await page.js(click("open"))
        await page.wait_js(f"{TEXT.format('status')}.startsWith('Opened')", 60, "the CT to open")
        await page.js(click("segment") + ";" + click("cancel"))
        await page.wait_js(f"{TEXT.format('status')}.startsWith('Cancelled')", 60, "the cancelled run")
        cancelled_status = await page.js(TEXT.format("status"))
        await page.wait_js("!document.getElementById('segment').disabled", 30, "Segment to be enabled again")
        await page.js(click("segment"))
        progress, status = [], ""
        for _ in range(1200):  # at most 300 s
            progress.append(await page.js("document.querySelector('#progress')?.getAttribute('aria-valuenow')"))
            status = await page.js(TEXT.format("status"))
            if status.startswith(("Segmented", "Segmentation failed")):
                break
            await asyncio.sleep(0.25)
        assert status.startswith("Segmented"), f"{status} {await page.js(TEXT.format('error'))}"
        await asyncio.sleep(2)  # the views' last frames reach the page
        views = await page.screenshot()
        segment_rows = await page.js(TEXT.format("segments"))
        await page.js(click("quantify"))
        await page.wait_js("!!document.getElementById('quantify-table')", 60, "the Quantify table")
        await page.js(click("compare"))
        await page.wait_js("!!document.getElementById('compare-table')", 120, "the Compare table")
        await page.js(type_into("out-dir", str(out_dir)))
        await asyncio.sleep(0.5)
        await page.js(click("save"))
        await page.wait_js(f"{TEXT.format('saved')}.includes('report.html')", 120, "Save")
        await asyncio.sleep(1)
        shown = await page.screenshot()
        from PIL import Image

        Image.fromarray(views).save(artefacts / "viewer_segmented.png")
        Image.fromarray(shown).save(artefacts / "viewer_quantified.png")
        return {"bad_path_error": bad_path_error, "cancelled": cancelled_status, "progress": progress, "views": views,
                "segment_rows": segment_rows,
                "quantify": await page.js(table("quantify-table")), "compare": await page.js(table("compare-table")),
                "severity": await page.js(TEXT.format("severity")), "requested": page.requested}


@pytest.fixture(scope="module")
def session(volumes: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("viewer")
    artefacts = Path(os.environ.get("COVIDSEG_ARTEFACTS") or tmp)
    artefacts.mkdir(parents=True, exist_ok=True)
    server, url = start_server(volumes / "ctchest4.nrrd", volumes / "ctchest4.seg.nrrd", tmp / "server.log")
    browser = None
    try:
        browser, websocket_url = start_chromium(tmp / "profile")
        shown = asyncio.run(asyncio.wait_for(drive(websocket_url, url, tmp / "saved", artefacts), 600))
    finally:
        if browser is not None:
            stop(browser)
        stop(server)
    return {**shown, "url": url, "saved": tmp / "saved"}


def test_a_bad_path_gets_the_librarys_message_on_the_page(session: dict) -> None:
    assert "no such file" in session["bad_path_error"].lower(), session["bad_path_error"]


def test_cancel_then_segment_shows_progress_and_the_segments(session: dict) -> None:
    assert session["cancelled"].startswith("Cancelled")
    assert any(value not in (None, "0") for value in session["progress"]), "the progress bar never moved"
    views = session["views"]
    for colour in (LEFT, RIGHT):
        assert colour_mask(views, colour).sum() > 2000, f"segment colour {colour} not in the page's views"
    # the panel lists the segments this run made: the bundled card splits infection into its two classes
    rows = session["segment_rows"]
    assert all(name in rows for name in ("Left lung", "Right lung", "Ground-glass opacity", "Consolidation")), rows
    assert "Infection" not in rows, rows


def test_page_numbers_are_the_librarys(session: dict, volumes: Path) -> None:
    from CovidSegLib.measure.evaluation import evaluate_case
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.measure.quantification import quantify
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.measure.report import labels_for_ct

    from CovidSegLib.engine.model import BUNDLED_CARD, read_card
    from CovidSegLib.measure.report import floor_of_card

    saved = session["saved"] / "ctchest4.seg.nrrd"
    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    result = quantify(labels_for_ct(saved, ct), ct.geometry, ct.array, floor_of_card(read_card(BUNDLED_CARD)))
    header = session["quantify"][0]
    rows = {row[0]: dict(zip(header, row)) for row in session["quantify"][1:]}
    for name, figures in (("Left lung", result.left), ("Right lung", result.right), ("Both lungs", result.total)):
        assert float(rows[name]["Volume (mL)"]) == pytest.approx(figures.volume_ml, abs=0.006), name
        assert float(rows[name]["Involvement (%)"]) == pytest.approx(figures.involvement_percent, abs=0.006), name
        assert float(rows[name]["Ground-glass opacity (mL)"]) == pytest.approx(figures.ggo_ml, abs=0.006), name
    assert result.severity in session["severity"]
    report = json.loads((session["saved"] / "ctchest4_report" / "report.json").read_text(encoding="utf-8"))
    assert report["severity"] == result.severity == "CT-0"  # CTChest has no COVID-19 (docs/report.md)
    card = read_card(BUNDLED_CARD)  # the saved report weighs the infection as covidseg segment --report does
    assert report["false_infection_floor_ml"] == pytest.approx(floor_of_card(card).ml)

    case = evaluate_case(saved, volumes / "ctchest4.seg.nrrd")
    dice = {row[0]: float(row[1]) for row in session["compare"][1:]}
    for name in ("left_lung", "right_lung", "lungs"):
        assert dice[name] == pytest.approx(case.metrics[name].dice, abs=0.0006), name
    assert dice["lungs"] > 0.9


def test_page_loads_nothing_from_outside_the_server(session: dict) -> None:
    origin = session["url"].rstrip("/")
    outside = [u for u in session["requested"] if not u.startswith((origin, "data:", "blob:", "about:"))]
    assert session["requested"] and not outside, outside
