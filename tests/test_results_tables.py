"""benchmarks.tables: the result tables of README.md and docs/RESULTS.md are the ones their JSON gives."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.markdown import markdown_table
from benchmarks.tables import DOCUMENTS, TABLES, generate
from benchmarks.tables.__main__ import main
from benchmarks.tables.markers import fill

ROOT = Path(__file__).parent.parent


def test_every_table_in_the_documents_matches_its_json():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tables", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"stale tables, run python -m benchmarks.tables:\n{proc.stdout}{proc.stderr}"


def copy_of_the_sources(tmp_path: Path) -> Path:
    """The documents and every JSON the tables read, under ``tmp_path`` as a repository root."""
    for path in [*DOCUMENTS, "recipes/main_dense.json"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_a_figure_typed_over_fails_the_check_and_generating_puts_the_json_back(tmp_path, capsys):
    root = copy_of_the_sources(tmp_path)
    results = root / "docs" / "RESULTS.md"
    original = results.read_text()
    assert "| 10 % | 2.2397 | 2.1535 | 8.61 | +0.0053 |" in original  # sweep.json, 10 % row
    results.write_text(original.replace("| 10 % | 2.2397 |", "| 10 % | 2.2000 |"))
    assert main(["--check", "--root", str(root)]) == 1
    assert "+| 10 % | 2.2397 |" in capsys.readouterr().out  # the diff shows what the JSON gives
    assert main(["--root", str(root)]) == 0
    assert results.read_text() == original


def test_generating_follows_the_json_not_the_document(tmp_path):
    root = copy_of_the_sources(tmp_path)
    sweep = root / "benchmarks" / "results" / "sweep.json"
    sweep.write_text(sweep.read_text().replace("2.2396631240844727", "2.5"))  # val loss at 10 %, no recovery
    now, generated = generate(root)["docs/RESULTS.md"]
    assert "| 10 % | 2.5000 | 2.1535 |" in generated and "| 10 % | 2.2397 |" in now


def test_fill_rewrites_only_between_markers_and_keeps_their_indent():
    text = "before\n  <!-- table: t -->\n  | stale |\n  <!-- /table -->\nafter\n"
    out = fill(text, lambda name: f"| {name} |\n|---|")
    assert out == "before\n  <!-- table: t -->\n\n  | t |\n  |---|\n\n  <!-- /table -->\nafter\n"
    assert fill(out, lambda name: f"| {name} |\n|---|") == out  # generating twice changes nothing


def test_a_block_naming_no_table_or_a_table_placed_nowhere_is_an_error(tmp_path):
    root = copy_of_the_sources(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    readme.write_text(text + "\n<!-- table: nope -->\n<!-- /table -->\n")
    with pytest.raises(ValueError, match=r"no table named \['nope'\]"):
        generate(root)
    readme.write_text(text.replace("<!-- table: headline -->", "<!-- headline -->"))
    with pytest.raises(ValueError, match=r"nowhere \['headline'\]"):
        generate(root)
    assert "headline" in TABLES


def test_markdown_table_escapes_bars_and_refuses_ragged_rows():
    table = markdown_table(["variant", "removed |a| pct"], [["mean |activation|", ""]])
    assert table == "| variant | removed \\|a\\| pct |\n|---|---|\n| mean \\|activation\\| | |"
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b"], [["only one"]])
