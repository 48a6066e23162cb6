"""Local Sphinx extension of the book, loaded by _config.yml (``sphinx.local_extensions``).

Each piece fixes one measured problem of Jupyter Book 1.0.4 (Sphinx 7.4, myst-nb 1.4,
sphinx-thebe 0.3.1) and stays as small as the problem allows:

1. **Duplicate inline scripts.** Under Sphinx 7, sphinx-thebe (and sphinx-togglebutton) register
   their inline ``<script>`` twice. sphinx-thebe's declares ``const THEBE_JS_URL``, so the second
   copy raises "Identifier 'THEBE_JS_URL' has already been declared" on every page. We drop exact
   duplicates from each page's script list.
2. **Progress bars.** ``nb_merge_streams`` should collapse a ``tqdm.std`` bar, which redraws
   itself with carriage returns, into its final line; but myst-nb 1.4 appends a newline after
   every stream chunk before it resolves the carriage returns, so each redraw stays on the page as
   a line of its own. We join the chunks of each stream verbatim first, then let myst-nb's own
   merge resolve ``\\r`` and ``\\b``.
3. **Pages with ipywidgets output** load RequireJS and the widget HTML manager from a CDN. The
   manager's bundled modules find their assets (the icon fonts) next to the URL that RequireJS
   gives their module names, which by default is the page's own folder (404s). We point those
   names at the manager's folder on the CDN. The manager (1.0.x) also typesets widget labels with
   MathJax 2's ``MathJax.Hub.Queue``, which MathJax 3 lacks (an uncaught TypeError, and the
   label's ``$...$`` left raw); ``_static/seqbook-mathjax-hub.js`` provides that one call on top of
   MathJax 3, and widget pages load MathJax even when they have no other math. (The ``$``
   delimiters MathJax 3 needs for those labels are set in _config.yml, ``mathjax3_config``.)

It also serves ``book/_static`` (``seqbook.css``: author-year bibliography without numeric labels).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "_static"

# The widget manager bundle as myst-nb's ``nb_ipywidgets_js`` names it (any exact version).
_HTML_MANAGER = re.compile(
    r"^(?P<dist>https://.+/@jupyter-widgets/html-manager@[^/]+/dist)/embed-amd\.js$"
)
# The AMD modules bundled in embed-amd.js 1.0.x that compute their asset folder from their URL.
_BUNDLED_MODULES = (
    "@jupyter-widgets/base",
    "@jupyter-widgets/base7",
    "@jupyter-widgets/controls",
    "@jupyter-widgets/controls7",
    "@jupyter-widgets/html-manager",
    "@jupyter-widgets/html-manager/dist/libembed-amd",
)


# 1. duplicate inline scripts -------------------------------------------------------------------


def _script_key(js: Any) -> tuple:
    # Sphinx keeps one copy with filename None and one with "": the same script.
    attributes = getattr(js, "attributes", {}) or {}
    return (
        getattr(js, "filename", js) or "",
        getattr(js, "priority", 500),
        tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
    )


def _drop_duplicate_scripts(scripts: list) -> None:
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique  # in place: this list is the builder's, reset for each page


# 2. progress bars ------------------------------------------------------------------------------


def _join_stream_chunks(outputs: list) -> list:
    """Concatenate every chunk of each stream (stdout, stderr) into its first chunk, verbatim."""
    joined: list = []
    first: dict[str, Any] = {}
    for output in outputs:
        if output.get("output_type") == "stream":
            name = output.get("name")
            if name in first:
                first[name]["text"] += output.get("text", "")
                continue
            output = copy.deepcopy(output)  # never edit the notebook's own outputs
            first[name] = output
        joined.append(output)
    return joined


def _patch_merge_streams() -> None:
    from myst_nb.core import render

    original = render.coalesce_streams
    if getattr(original, "_seqbook", False):
        return

    def coalesce_streams(outputs):
        return original(_join_stream_chunks(outputs or []))

    coalesce_streams._seqbook = True
    render.coalesce_streams = coalesce_streams


# 3. widget pages -------------------------------------------------------------------------------


def _add_script(builder: Any, scripts: list, filename: str, **attributes: Any) -> Any:
    """Add a script to this page only (Sphinx resets the list for the next page)."""
    before = len(scripts)
    builder.add_js_file(filename, **attributes)
    if len(scripts) != before + 1:
        logger.warning("[seqbook] could not add the script %r to this page", filename or "inline")
        return None
    return scripts[-1]


def _fix_widget_page(builder: Any, scripts: list) -> None:
    manager = next(
        (
            i
            for i, js in enumerate(scripts)
            if _HTML_MANAGER.match(getattr(js, "filename", "") or "")
        ),
        None,
    )
    if manager is None:
        return
    dist = _HTML_MANAGER.match(scripts[manager].filename)["dist"]
    paths = {name: f"{dist}/{name.rsplit('/', 1)[-1]}" for name in _BUNDLED_MODULES}
    body = f"if (window.requirejs) {{ window.requirejs.config({{paths: {json.dumps(paths)}}}); }}"
    # Sphinx sorts the page's scripts by priority with a stable sort: the config takes the
    # manager's priority and its place, so it runs after RequireJS and before the manager.
    if _add_script(builder, scripts, "", body=body, priority=scripts[manager].priority):
        scripts.insert(manager, scripts.pop())
    # MathJax 3 is deferred; a deferred shim after it runs once MathJax's object exists, and
    # before the manager renders the widgets (on the window's load event).
    _add_script(builder, scripts, "seqbook-mathjax-hub.js", defer="defer", priority=900)


def _mathjax_on_widget_pages(app: Sphinx, pagename: str, *args: Any) -> None:
    """Widget labels may hold math: load MathJax on widget pages that have no other math."""
    from myst_nb.sphinx_ import NbMetadataCollector

    if app.builder.format == "html" and app.env is not None:
        if "ipywidgets_state" in NbMetadataCollector.get_js_files(app.env, pagename):
            app.env.get_domain("math").data["has_equations"][pagename] = True


def _on_page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree):
    scripts = context.get("script_files")
    if app.builder.format != "html" or not isinstance(scripts, list):
        return
    _drop_duplicate_scripts(scripts)
    _fix_widget_page(app.builder, scripts)


def _add_static_dir(app: Sphinx) -> None:
    app.config.html_static_path.append(str(STATIC_DIR))


def setup(app: Sphinx) -> dict:
    _patch_merge_streams()
    app.connect("builder-inited", _add_static_dir)
    app.add_css_file("seqbook.css")  # book/_static/seqbook.css: the bibliography's look
    # Before sphinx.ext.mathjax (500) decides whether this page loads MathJax.
    app.connect("html-page-context", _mathjax_on_widget_pages, priority=400)
    # After myst-nb (500) has added the page's widget scripts, MathJax included.
    app.connect("html-page-context", _on_page_context, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
