"""Tests of the report's style-transfer section (normapps.report.sections.style), in fast mode."""

import re
from html import escape

import pytest

from normapps.report import build_report
from normapps.report.sections import style
from normapps.tasks.style import checkpoints

MISSING = [name for name in style.METHODS if not checkpoints.checkpoint_path(name).is_file()]


@pytest.mark.skipif(bool(MISSING), reason=f"shipped stylizers missing: {', '.join(f'checkpoints/style_{n}.pt' for n in MISSING)}")
def test_fast_section_renders_its_tables_and_writes_every_figure(tmp_path):
    html = build_report(tmp_path, sections=["style_section"], fast=True).read_text()
    section = html[html.index('<section id="style_section">'):]
    for row in ("content photo", "colour transfer", "adain"):
        assert re.search(rf"<tr><td>{row}</td>(<td>[-0-9.e+]+</td>){{3}}</tr>", section)
    for alpha in style.ALPHAS:
        assert re.search(rf"<tr><td>{alpha:g}</td>(<td>[-0-9.e+]+</td>){{4}}</tr>", section)
    assert "Fast mode" in section and "random-weight VGG" in section and "not an ImageNet-trained VGG" in section
    assert "python benchmarks/style_eval.py" in section and "benchmarks/results/style_eval.md" in section
    for name in ("style_grid", "style_alpha", "style_interpolation"):
        assert f'<img src="{name}.png"' in section
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_missing_shipped_stylizers_are_named_with_their_command_and_the_report_still_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(style, "checkpoint_path", lambda name: tmp_path / f"style_{name}.pt")
    html = build_report(tmp_path / "report", sections=["style_section"], fast=True).read_text()
    assert "Not drawn" in html and "incomplete" in html
    for name in style.METHODS:
        assert f"style_{name}.pt" in html and escape(style.SHIPPED[name][1]) in html
    assert "<img" not in html
