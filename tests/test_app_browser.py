"""``v2a-app`` end to end in a real browser: Debian's ``chromium`` driven by Playwright's Python API.

The test starts the app (the embedded model, 4 steps) on a free local port in a subprocess whose sockets are watched:
any connection or name lookup that is not this machine is recorded, and the page's own requests are recorded by the
browser; both must stay on 127.0.0.1. It uploads the demo clip, generates with HG, checks the returned video's audio
stream, runs a two-column comparison, submits a broken spec and a text file named ``.mp4``, and keeps screenshots of
each step (``V2A_APP_SHOTS``: a folder to keep them in; default: pytest's temporary folder).

Skipped, with the reason, where Gradio, Playwright or the browser is missing (``.ci/run`` installs all three;
``V2A_CHROMIUM`` names another browser executable).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import bench
import pytest

from v2a_sampler.media import io

if importlib.util.find_spec("gradio") is None:  # found, not imported: the app runs in its own process
    pytest.skip("the web app needs Gradio: pip install -e '.[app]'", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs Playwright: pip install -e '.[app]'"
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "assets" / "demo_clip.mp4"
CHROMIUM = Path(os.environ.get("V2A_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]  # fmt: skip
STEPS = 4
STARTUP_S = 120  # importing torch and Gradio on a busy 2-core machine
RUN_MS = 120_000  # one generation or comparison, queue included
VIEWPORT = {"width": 1280, "height": 900}

if not CHROMIUM.is_file():
    pytest.skip(
        f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium) or set V2A_CHROMIUM",
        allow_module_level=True,
    )

#: Runs the app with every socket connection and name lookup off this machine written to V2A_NET_LOG.
GUARD = r"""
import os, runpy, socket, sys
log = open(os.environ["V2A_NET_LOG"], "a", buffering=1)
LOCAL = ("127.", "::1", "localhost", "0.0.0.0")
def local(host):
    return str(host).startswith(LOCAL)
def watch(fn):
    def wrapped(self, address, *a):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            log.write(f"connect {address[0]}\n")
        return fn(self, address, *a)
    return wrapped
socket.socket.connect = watch(socket.socket.connect)
socket.socket.connect_ex = watch(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *a, **k):
    if host is not None and not local(host):
        log.write(f"lookup {host}\n")
    return _getaddrinfo(host, *a, **k)
socket.getaddrinfo = getaddrinfo
sys.argv = ["v2a-app", *sys.argv[1:]]
runpy.run_module("v2a_sampler.frontends.app", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("V2A_APP_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port; yields its URL, then checks it left no files and made no outside connection."""
    tmp = tmp_path_factory.mktemp("app")
    port, log, net = _free_port(), tmp / "app.log", tmp / "net.log"
    net.write_text("")
    env = {**os.environ, "V2A_NET_LOG": str(net), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", GUARD, "--port", str(port), "--steps", str(STEPS)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    if not bench.wait_until_serving(url, proc, STARTUP_S):
        proc.kill()
        pytest.fail(f"the app did not start:\n{log.read_text()}")
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text, text
    workdir = Path(next(ln for ln in text.splitlines() if ln.startswith("v2a-app: files in ")).split()[3])
    assert not workdir.exists(), f"{workdir} was not removed"
    assert net.read_text() == "", f"the app reached outside this machine:\n{net.read_text()}"


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.requests = []  # type: ignore[attr-defined]
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(server)
    pg.wait_for_selector("#generate")
    yield pg
    context.close()


def _upload(page, path: Path) -> None:
    page.set_input_files("#video-in input[type=file]", str(path))
    page.wait_for_selector("#video-in video")


def _download(page, url: str, dest: Path) -> Path:
    dest.write_bytes(page.request.get(url).body())
    return dest


#: The text an element shows: a text field's value, any other element's rendered text.
SHOWN = "e => (e ? (e.value !== undefined ? e.value : e.innerText) : '')"


def _shown(page, selector: str) -> str:
    return page.evaluate(f"s => ({SHOWN})(document.querySelector(s))", selector)


def _wait_text(page, selector: str, text: str) -> str:
    """Wait until ``selector`` shows ``text``; return all it shows."""
    page.wait_for_function(f"([s, t]) => ({SHOWN})(document.querySelector(s)).includes(t)", arg=[selector, text],
                           timeout=RUN_MS)  # fmt: skip
    return _shown(page, selector)


def test_page_is_offline_and_explains_specs_as_you_type(page, server, shots):
    page.wait_for_load_state("networkidle")
    hosts = {urlparse(u).netloc for u in page.requests if not u.startswith(("data:", "blob:"))}
    assert hosts == {urlparse(server).netloc}, hosts
    assert page.title() == "v2a-sampler"
    assert "hg(2.7,2.5,1.2)" in page.inner_text("#explain") and f"× {STEPS} stages = 16 NFE" in page.inner_text(
        "#explain"
    )
    page.fill("#spec textarea", "cfg(4.5)@[0.2,0.8]")
    text = _wait_text(page, "#explain", "cfg(4.5)@[0.2,0.8]")
    assert "2 NFE/step" in text and "at most 8 NFE" in text and "+4.5" in text and "-3.5" in text
    # an MMAudio variant: CI has none of its files, so the page says so
    page.click("#model input")
    page.get_by_role("option", name="mmaudio:small_16k").click()
    note = _wait_text(page, "#model-note", "not in the local Hugging Face cache")
    assert "hkchengrex/MMAudio/weights/mmaudio_small_16k.pth" in note
    assert page.input_value("#spec textarea") == "cfg(4.5)"  # MMAudio's default guidance
    assert page.is_visible("#prompt")
    page.screenshot(path=str(shots / "app_start.png"), full_page=True)


def test_generate_with_hg_returns_the_video_with_its_new_soundtrack(page, shots, tmp_path):
    _upload(page, DEMO)
    page.click("#generate")
    line = _wait_text(page, "#status textarea", "NFE")
    assert line.startswith(f"hg(2.7,2.5,1.2) euler x{STEPS} · NFE 16 · "), line
    page.wait_for_selector("#out-video video")
    page.wait_for_selector("#out-spectrogram img")
    page.screenshot(path=str(shots / "app_generate.png"), full_page=True)
    src = page.get_attribute("#out-video video", "src")
    mp4 = _download(page, src, tmp_path / "out.mp4")
    info, source = io.probe_video(mp4), io.probe_video(DEMO)
    assert info.has_audio and abs(info.duration - source.duration) < 0.05
    wav_url = page.get_attribute("#out-wav a", "href")
    audio, sr = io.read_audio(_download(page, wav_url, tmp_path / "out.wav"))
    assert sr == 16000 and abs(audio.shape[-1] / sr - source.duration) < 1e-3  # the whole clip, to the sample
    muxed, _ = io.read_audio(mp4)
    assert abs(muxed.shape[-1] / sr - source.duration) < 0.05  # the audio stream covers the video


def test_compare_two_specs_side_by_side(page, shots, tmp_path):
    _upload(page, DEMO)
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-spec-1 textarea", "cfg(3)")
    page.fill("#compare-spec-2 textarea", "hg")
    _wait_text(page, "#compare-explain", "hg(2.7,2.5,1.2)")
    page.click("#compare")
    _wait_text(page, "#compare-status textarea", "2 specs")
    first, second = _shown(page, "#column-1-line textarea"), _shown(page, "#column-2-line textarea")
    assert first.startswith(f"cfg(3) euler x{STEPS} · NFE 8 · ") and second.startswith(
        f"hg(2.7,2.5,1.2) euler x{STEPS} · NFE 16 · "
    )
    for k in (1, 2):
        src = page.get_attribute(f"#column-{k}-video video", "src")
        assert io.probe_video(_download(page, src, tmp_path / f"{k}.mp4")).has_audio
        page.wait_for_selector(f"#column-{k}-spectrogram img")
    assert not page.is_visible("#column-3") and not page.is_visible("#column-4")
    page.screenshot(path=str(shots / "app_compare.png"), full_page=True)
    page.locator("#compare-panel").screenshot(path=str(shots / "app_compare_panel.png"))  # the README's picture


def test_bad_inputs_are_messages_in_the_page(page, shots, tmp_path):
    page.fill("#spec textarea", "hg(2.7,")
    assert _wait_text(page, "#explain", "error:").startswith("error: cannot parse guidance")
    page.click("#generate")
    line = _wait_text(page, "#status textarea", "error:")
    assert line == "error: cannot parse guidance 'hg(2.7,': expected num, got 'end of input'"
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    page.fill("#spec textarea", "hg")
    page.set_input_files("#video-in input[type=file]", str(fake))
    page.wait_for_selector("#video-in video")  # uploaded (the browser cannot play it)
    page.click("#generate")
    line = _wait_text(page, "#status textarea", "not a media file")
    assert line.startswith("error: cannot read notes.mp4: not a media file FFmpeg understands"), line
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-spec-2 textarea", "")
    page.click("#compare")
    assert _wait_text(page, "#compare-status textarea", "error:") == "error: compare needs 2 to 4 guidance specs, got 1"
    page.screenshot(path=str(shots / "app_errors.png"), full_page=True)
    assert "Traceback" not in page.content()
