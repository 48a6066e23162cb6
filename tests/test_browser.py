"""Open the built website in headless Chromium and check every page a reader can reach.

Run after `make book`: `pytest -m browser tests/test_browser.py`.

- Chromium is Debian's `chromium` package (/usr/bin/chromium), installed here with apt-get when
  it is missing; Python Playwright drives it.
- `_build/html` is served on 127.0.0.1 (a free port) by a threaded http.server.
- Nothing on the internet is reachable from the test machines, so requests to the CDNs the pages
  use (jsdelivr, unpkg) are answered from the npm package of the exact version in the URL,
  fetched once with `npm pack` into `_build/browser-cache/`. Any other outside request is aborted
  and reported.
- The pages are those of `_toc.yml` (intro, chapters, exercises, bibliography), so new chapters
  are covered without editing this file. Screenshots go to `_build/screenshots/<page>.png`
  (e.g. `01_sequences.png`).

Environment: SEQBOOK_HTML (the html folder, default <repo>/_build/html); SEQBOOK_TOC (default:
the _toc.yml of the book the html folder was built from, else <repo>/_toc.yml).
"""

from __future__ import annotations

import functools
import html
import json
import mimetypes
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("SEQBOOK_HTML", REPO_ROOT / "_build" / "html")).resolve()
BUILD_DIR = HTML_DIR.parent
SCREENSHOT_DIR = BUILD_DIR / "screenshots"
NPM_CACHE_DIR = BUILD_DIR / "browser-cache"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
PAGE_TIMEOUT_MS = 60_000

# CDN URL forms -> (npm package name, exact version, file path inside the package).
_PACKAGE = r"(?P<name>(?:@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*)@(?P<version>[^/]+)/(?P<path>.*)"
CDN_FORMS = [
    re.compile(r"^https?://cdn\.jsdelivr\.net/npm/" + _PACKAGE + r"$"),
    re.compile(r"^https?://unpkg\.com/" + _PACKAGE + r"$"),
]
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
# A tqdm.std line: "desc: 40%|####      | 40/100 [...]".
TQDM_LINE = re.compile(r"^(?P<desc>.*?)\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\b")
OUTPUT_STREAM = re.compile(
    r'<div class="output stream[^"]*"><div class="highlight"><pre>(.*?)</pre>', re.DOTALL
)
IMAGE_FILE = re.compile(r"\.(png|jpe?g|svg|gif|webp)$", re.IGNORECASE)
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
}


# --- the pages -----------------------------------------------------------------------------------


def _toc_path() -> Path:
    if "SEQBOOK_TOC" in os.environ:
        return Path(os.environ["SEQBOOK_TOC"])
    beside_build = BUILD_DIR.parent / "_toc.yml"  # jupyter-book builds <book>/_build/html
    return beside_build if beside_build.is_file() else REPO_ROOT / "_toc.yml"


def _toc_files(entries: list) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        files += _toc_files(entry.get("sections", []))
        files += _toc_files(entry.get("chapters", []))
    return files


def toc_pages() -> list[str]:
    """Every page of _toc.yml, as its path in the site without extension (e.g. book/intro)."""
    toc = yaml.safe_load(_toc_path().read_text(encoding="utf-8"))
    files = [toc["root"]] + _toc_files(toc.get("chapters", []))
    for part in toc.get("parts", []):
        files += _toc_files(part.get("chapters", []))
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


# --- Chromium and the local server -------------------------------------------------------------


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): "
            "install Debian's chromium package (`apt-get install chromium`)."
        )
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if done.returncode != 0:
            pytest.fail(
                f"Could not install Chromium: `{' '.join(command)}` exited with "
                f"{done.returncode}:\n{done.stderr[-2000:]}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site_url():
    if not (HTML_DIR / "index.html").is_file():
        pytest.fail(f"No built website at {HTML_DIR}: run `make book` first.")
    handler = functools.partial(_QuietHandler, directory=str(HTML_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# --- CDN requests served from npm packages -------------------------------------------------------


class NpmMirror:
    """Answers CDN URLs from `npm pack`ed packages kept under NPM_CACHE_DIR."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.fetched: set[str] = set()  # name@version of the packages the pages used

    def package_dir(self, name: str, version: str) -> Path:
        folder = self.cache_dir / f"{name.replace('/', '__')}@{version}"
        if not (folder / "package" / "package.json").is_file():
            self._fetch(name, version, folder)
        self.fetched.add(f"{name}@{version}")
        return folder / "package"

    def _fetch(self, name: str, version: str, folder: Path) -> None:
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed to fetch CDN packages for the browser test")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            done = subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", tmp],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"npm pack {name}@{version} failed: {done.stderr[-1000:]}")
            tarball = Path(tmp) / json.loads(done.stdout)[0]["filename"]
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(tarball) as tar:
                tar.extractall(unpacked, filter="data")
            roots = [p for p in unpacked.iterdir() if p.is_dir()]
            if len(roots) != 1:
                raise RuntimeError(f"npm pack {name}@{version}: no single root folder")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            roots[0].rename(folder / "package")  # npm tarballs hold one root, usually package/

    def resolve(self, url: str) -> tuple[Path | None, str | None]:
        """(file, None) for a CDN URL with an exact version, else (None, why not)."""
        for form in CDN_FORMS:
            match = form.match(unquote(url.split("?")[0].split("#")[0]))
            if match:
                break
        else:
            return None, "not a CDN URL this test can serve"
        name, version, path = match["name"], match["version"], match["path"]
        if not EXACT_VERSION.match(version):
            return None, f"{name}@{version} is not an exact version"
        try:
            root = self.package_dir(name, version)
        except RuntimeError as exc:
            return None, str(exc)
        file = (root / path).resolve()
        if root.resolve() not in file.parents or not file.is_file():
            return None, f"{path} is not a file of the npm package {name}@{version}"
        return file, None


# --- one page ----------------------------------------------------------------------------------

CHECKS_JS = """
async () => {
  // Images below the fold may be lazy: load every one before measuring it.
  await Promise.all(Array.from(document.images).map((img) => {
    img.loading = "eager";
    return img.decode().catch(() => null);
  }));
  const images = Array.from(document.images).map((img) => ({
    src: img.getAttribute("src"), alt: (img.getAttribute("alt") || "").trim(),
    complete: img.complete, width: img.naturalWidth,
  }));
  const math = Array.from(document.querySelectorAll("span.math, div.math"));
  const untypeset = math.filter((el) => !el.querySelector("mjx-container"))
    .map((el) => el.textContent.trim().slice(0, 80));
  const texErrors = Array.from(document.querySelectorAll("mjx-merror"))
    .map((el) => (el.getAttribute("data-mjx-error") || el.textContent).slice(0, 80));
  // Prose only: code may quote TeX on purpose.
  const prose = document.body.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, textarea, mjx-container")
    .forEach((el) => el.remove());
  const text = prose.textContent;
  const rawTex = ["\\\\(", "\\\\[", "$$"].filter((d) => text.includes(d));
  // Widget labels carry $...$ math that the MathJax 2 shim must hand to MathJax 3.
  const widgetTex = Array.from(document.querySelectorAll(".widget-subarea label"))
    .filter((el) => !el.querySelector("mjx-container") && /\\$[^$]+\\$/.test(el.textContent))
    .map((el) => el.textContent.slice(0, 80));
  const views = document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]').length;
  const widgets = document.querySelectorAll(".widget-subarea .jupyter-widgets").length;
  const links = Array.from(document.querySelectorAll("a[href]")).map((a) => a.href);
  return {
    links,
    codeBlocks: document.querySelectorAll("div.highlight pre").length,
    copyButtons: document.querySelectorAll("button.copybtn").length,
    images, untypeset, texErrors, rawTex, widgetTex, views, widgets,
    mathElements: math.length,
    mjx: document.querySelectorAll("mjx-container").length,
  };
}
"""

WAIT_FOR_MATHJAX_JS = """
async () => {
  if (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) return false;
  let promise;
  do {  // typeset calls made meanwhile (widgets) chain onto startup.promise
    promise = window.MathJax.startup.promise;
    await promise;
  } while (promise !== window.MathJax.startup.promise);
  return true;
}
"""


def progress_bar_redraws(source: str) -> list[str]:
    """Lines of a stream output where a progress bar's redraw was left as a line of its own."""
    redraws = []
    for block in OUTPUT_STREAM.findall(source):
        lines = html.unescape(re.sub(r"<[^>]+>", "", block)).splitlines()
        for line, following in zip(lines, lines[1:]):
            bar, next_bar = TQDM_LINE.match(line), TQDM_LINE.match(following)
            if (
                bar
                and next_bar
                and bar["desc"] == next_bar["desc"]
                and int(bar["n"]) < int(bar["total"])
                and int(next_bar["n"]) > int(bar["n"])
            ):
                redraws.append(line.strip())
    return redraws


def check_page(browser, site_url: str, page_name: str, mirror: NpmMirror) -> list[str]:
    """Load one page and return every problem found on it."""
    problems: list[str] = []
    source_file = HTML_DIR / f"{page_name}.html"
    if not source_file.is_file():
        return [f"{source_file.relative_to(HTML_DIR)} was not built"]
    source = source_file.read_text(encoding="utf-8")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)

    def route(route) -> None:
        url = route.request.url
        if url.startswith(site_url + "/"):
            route.continue_()
            return
        file, why_not = mirror.resolve(url)
        if file is None:
            problems.append(f"unserved external request {url} ({why_not})")
            route.abort()
            return
        content_type = CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        route.fulfill(
            status=200,
            path=file,
            content_type=content_type or "application/octet-stream",
            headers={"Access-Control-Allow-Origin": "*"},
        )

    def on_console(message) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            problems.append(f"console error: {message.text} [{where}]")

    def on_response(response) -> None:
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url}")

    def on_failed(request) -> None:
        if request.url.startswith(site_url + "/"):
            problems.append(f"failed local request {request.url}: {request.failure}")

    context.route("**/*", route)
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)

    try:
        page.goto(f"{site_url}/{page_name}.html", wait_until="load")
        has_math = 'class="math notranslate' in source
        if has_math and not page.evaluate(WAIT_FOR_MATHJAX_JS):
            problems.append("the page has math but MathJax 3 did not start")
        page.wait_for_load_state("networkidle")
        found = page.evaluate(CHECKS_JS)
        if found["views"]:
            try:  # the widget manager renders on the load event, asynchronously
                page.wait_for_function(
                    "n => document.querySelectorAll('.widget-subarea .jupyter-widgets')"
                    ".length >= n",
                    arg=found["views"],
                    timeout=20_000,
                )
            except PlaywrightTimeout:
                pass  # reported below as widgets not rendered
            page.wait_for_load_state("networkidle")
            page.evaluate(WAIT_FOR_MATHJAX_JS)
            found = page.evaluate(CHECKS_JS)
        shot = SCREENSHOT_DIR / f"{Path(page_name).name}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    except Exception as exc:  # a timeout or a crash is a problem of this page, not the test's
        problems.append(f"could not load and inspect the page: {exc}")
        return problems
    finally:
        context.close()

    if has_math:
        if found["mjx"] == 0:
            problems.append(
                f"math not typeset: {found['mathElements']} math elements, no mjx-container"
            )
        for tex in found["untypeset"]:
            problems.append(f"math not typeset: {tex!r}")
        for error in found["texErrors"]:
            problems.append(f"TeX error from MathJax: {error!r}")
    for label in found["widgetTex"]:
        problems.append(f"math in a widget label not typeset: {label!r}")
    for delimiter in found["rawTex"]:
        problems.append(f"raw TeX delimiter {delimiter!r} left in the visible text")
    if found["widgets"] < found["views"]:
        problems.append(f"{found['views']} widget outputs but {found['widgets']} rendered widgets")
    if found["codeBlocks"] and not found["copyButtons"]:
        problems.append(f"{found['codeBlocks']} code blocks but no copy button")
    if (HTML_DIR / "_sources" / f"{page_name}.ipynb").is_file():  # a notebook page
        for what, needle in [
            ("Binder launch button", "https://mybinder.org/v2/"),
            ("Colab launch button", "https://colab.research.google.com/github/"),
            ("download button for the .ipynb", f"/_sources/{page_name}.ipynb"),
        ]:
            if not any(needle in link for link in found["links"]):
                problems.append(f"no {what} (no link containing {needle!r})")
    for line in progress_bar_redraws(source):
        problems.append(f"progress bar redraw left in the output: {line!r}")
    for image in found["images"]:
        if not image["complete"] or image["width"] == 0:
            problems.append(f"image not loaded: {image['src']}")
        if not image["alt"] or IMAGE_FILE.search(image["alt"]):
            problems.append(
                f"image without alt text: {image['src']} (alt={image['alt']!r}; in a notebook set "
                'the cell metadata {"mystnb": {"image": {"alt": "..."}}})'
            )
    return problems


# --- the tests ----------------------------------------------------------------------------------


def test_toc_lists_intro_and_chapters():
    pages = toc_pages()
    assert pages[0] == "book/intro", f"the book's root page should be book/intro, not {pages[0]}"
    assert "book/01_sequences" in pages, f"chapter 1 missing from {_toc_path()}: {pages}"
    names = [Path(page).name for page in pages]  # screenshots are named after the page's file
    assert len(names) == len(set(names)), f"two pages share a file name in {_toc_path()}: {pages}"


def test_solutions_are_not_pages():
    if not HTML_DIR.is_dir():
        pytest.fail(f"No built website at {HTML_DIR}: run `make book` first.")
    published = sorted(str(p.relative_to(HTML_DIR)) for p in HTML_DIR.rglob("*solutions*"))
    assert not published, f"solutions are published on the website: {published}"


def test_site_is_ready_for_github_pages():
    if not HTML_DIR.is_dir():
        pytest.fail(f"No built website at {HTML_DIR}: run `make book` first.")
    # Without it GitHub Pages drops _static/, _images/ and _sources/.
    assert (HTML_DIR / ".nojekyll").is_file(), f"{HTML_DIR}/.nojekyll is missing"


def test_every_page_renders_cleanly(site_url, browser):
    pages = toc_pages()
    mirror = NpmMirror(NPM_CACHE_DIR)
    problems: dict[str, list[str]] = defaultdict(list)
    started = time.perf_counter()
    for page_name in pages:
        problems[page_name] += check_page(browser, site_url, page_name, mirror)
    elapsed = time.perf_counter() - started
    print(
        f"\nbrowser test: {len(pages)} pages in {elapsed:.1f} s; screenshots in {SCREENSHOT_DIR}; "
        f"CDN packages served from npm: {', '.join(sorted(mirror.fetched)) or 'none'}"
    )
    report = [
        f"{page_name}:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(found))
        for page_name, found in problems.items()
        if found
    ]
    assert not report, f"{len(report)} of {len(pages)} pages have problems:\n" + "\n".join(report)
