"""The API reference builds from the docstrings with mkdocs --strict, and the code passes ruff (lint and format)."""

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


class _TextOutsideCode(HTMLParser):
    """The text of a page outside ``<pre>``/``<code>``, and how deep ``<blockquote>``s nest."""

    def __init__(self):
        super().__init__()
        self.code = self.quotes = self.deepest_quote = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "code"):
            self.code += 1
        elif tag == "blockquote":
            self.quotes += 1
            self.deepest_quote = max(self.deepest_quote, self.quotes)

    def handle_endtag(self, tag):
        if tag in ("pre", "code"):
            self.code -= 1
        elif tag == "blockquote":
            self.quotes -= 1

    def handle_data(self, data):
        if not self.code:
            self.text.append(data)


def _unrendered(page: str) -> list[str]:
    """What a reader would see as unrendered reST on a built page of the API reference."""
    parser = _TextOutsideCode()
    parser.feed(page)
    outside = "".join(parser.text)
    found = [m.group(0) for m in re.finditer(r":(mod|func|class|meth|attr|data|obj|exc):(`|<code)", page)]
    found += [line.strip() for line in outside.splitlines() if ">>>" in line]
    found += [line.strip() for line in outside.splitlines() if re.fullmatch(r"\s*={3,}(\s+={3,})*\s*", line)]
    if parser.deepest_quote > 1:  # a `>>>` read as nested Markdown quotes instead of an example
        found.append(f"{parser.deepest_quote} nested <blockquote>s")
    for bases in re.findall(r"Bases:(.*?)</p>", page, re.S):
        names = re.sub(r"<[^>]+>", " ", bases) + " " + " ".join(re.findall(r'title="([^"]+)"', bases))
        if re.search(r"(^|[\s.])_\w", names):
            found.append("Bases:" + " ".join(names.split()))
    return found


def test_the_api_reference_builds_strictly_and_reads_as_rendered_markdown(tmp_path):
    # To look at it as a reader does: build into site/, serve it with
    #   python -m http.server 8000 --bind 127.0.0.1 --directory site
    # and screenshot a page with headless chromium (Debian's `chromium` package):
    #   chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    #     --disable-component-update --disable-sync --user-data-dir=$(mktemp -d) --screenshot=/tmp/api.png \
    #     --window-size=1280,2000 http://127.0.0.1:8000/api/callbacks/
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    out = _run("mkdocs", "build", "--strict", "--site-dir", str(site))
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    pages = sorted((site / "api").rglob("*.html"))
    assert site / "api" / "callbacks" / "index.html" in pages
    assert len(list((site / "api" / "structured").rglob("index.html"))) > 1  # structured removal has several pages
    bad = {str(p.relative_to(site)): found for p in pages if (found := _unrendered(p.read_text()))}
    assert not bad, bad
    # every top-level name is documented under its public path, and no object under a private one
    html = "\n".join(p.read_text() for p in pages)
    anchors = set(re.findall(r'<h\d id="(lightning_prune[\w.]*)" class="doc doc-heading"', html))
    import lightning_prune

    assert {f"lightning_prune.{name}" for name in lightning_prune.__all__} <= anchors
    assert not [a for a in anchors if any(part.startswith("_") for part in a.split("."))]


def test_the_check_of_the_rendered_reference_sees_what_it_looks_for():
    assert not _unrendered('<p>See <a href="#x"><code>Schedule</code></a>.</p><pre><code>&gt;&gt;&gt; 1</code></pre>')
    assert _unrendered("<p>see :class:<code>Schedule</code></p>")
    assert _unrendered("<p>&gt;&gt;&gt; 1 + 1</p>")
    assert _unrendered("<blockquote><blockquote><p>import torch</p></blockquote></blockquote>")
    assert _unrendered("<p>=====  =====\nname   score\n=====  =====</p>")
    assert _unrendered(
        '<p>Bases: <code><span title="lightning_prune.callbacks._lifecycle.Lifecycle">Lifecycle</span></code></p>'
    )


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(check):
    pytest.importorskip("ruff")
    out = _run("ruff", *check, "lightning_prune", "tests", "benchmarks", "recipes")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]


def test_the_readme_imports_only_what_the_package_exports():
    import lightning_prune

    readme = (ROOT / "README.md").read_text()
    assert not re.findall(r"from lightning_prune\.\w+ import", readme)  # no submodule imports in the quick start
    imported = {n.strip() for m in re.findall(r"from lightning_prune import ([^\n]+)", readme) for n in m.split(",")}
    assert imported and imported <= set(lightning_prune.__all__), imported - set(lightning_prune.__all__)
    for name in lightning_prune.__all__:  # and the package exports nothing else at top level
        assert not name.startswith("_") and getattr(lightning_prune, name) is not None


def test_internals_are_underscored_and_the_api_reference_documents_only_public_modules():
    import importlib

    import lightning_prune

    plumbing = ["_registry", "_shards", "_selection", "_compat", "callbacks._lifecycle"]
    for name in plumbing:
        importlib.import_module(f"lightning_prune.{name}")
    for gone in ["registry", "shards", "selection", "callbacks.base"]:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"lightning_prune.{gone}")
    # internals are reachable from no top-level name but their own module
    exported = {getattr(lightning_prune, n) for n in lightning_prune.__all__}
    assert not {"MaskRegistry", "compute_masks", "RunningStats", "registry_of"} & set(lightning_prune.__all__)
    assert all(getattr(obj, "__module__", "").startswith("lightning_prune") for obj in exported)
    documented = [
        line.split()[1]
        for md in (ROOT / "docs" / "api").glob("*.md")
        for line in md.read_text().splitlines()
        if line.startswith(":::")
    ]
    assert documented and not [d for d in documented if any(part.startswith("_") for part in d.split("."))]
