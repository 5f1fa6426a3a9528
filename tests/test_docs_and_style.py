"""The API reference builds from the docstrings with mkdocs --strict, and the code passes ruff (lint and format)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_api_reference_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings")
    out = _run("mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert (tmp_path / "site" / "api" / "callbacks" / "index.html").is_file()


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(check):
    pytest.importorskip("ruff")
    out = _run("ruff", *check, "lightning_prune", "tests", "benchmarks", "recipes")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]


def test_the_readme_imports_only_what_the_package_exports():
    import re

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
