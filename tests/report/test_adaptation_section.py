"""Tests of the report's domain-adaptation section (normapps.report.sections.adaptation), in fast mode."""

import re

import torch

from normapps.report import build_report
from normapps.report.sections import adaptation


def table(html: str) -> str:
    section = html[html.index('<section id="adaptation_section">'):]
    return section[section.index("<table>"):section.index("</table>")]


def test_fast_section_renders_every_method_and_shift_with_its_figure_deterministically(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    html = build_report(tmp_path / "a", sections=["adaptation_section"], fast=True, seed=3).read_text()
    assert torch.get_num_threads() == threads  # the report runs its sections on one thread, then restores the count
    rows = table(html)
    for method in ("source", "adabn", "norm", "prior", "tent"):
        assert re.search(rf"<tr><td>{method}</td><td>[^<]+</td>(<td>\d+\.\d</td>){{{len(adaptation.SHIFTS)}}}</tr>", rows)
    for label, *_ in adaptation.SHIFTS:
        assert f"<th>{label}</th>" in rows
    assert "Fast mode" in html and "not meaningful" in html and "seed 3" in html
    assert f"{adaptation.FAST_COUNT} test images per shift" in html
    assert "python benchmarks/adaptation.py" in html and "benchmarks/results/adaptation.md" in html
    assert '<img src="adaptation_statistics_shift.png"' in html
    assert (tmp_path / "a" / "adaptation_statistics_shift.png").read_bytes().startswith(b"\x89PNG")
    again = build_report(tmp_path / "b", sections=["adaptation_section"], fast=True, seed=3).read_text()
    assert table(again) == rows


def test_the_text_names_only_differences_beyond_two_standard_errors():
    column = {"source": 80.0, "adabn": 40.0, "norm": 42.0, "prior": 77.0, "tent": 60.0}
    errors = {method: {label: value for label, *_ in adaptation.SHIFTS} for method, value in column.items()}
    first = adaptation._differences(errors, 360).split("; ")[0]
    assert first == f"{adaptation.SHIFTS[0][0]}: adabn, norm and tent below source, prior and tent above adabn"
    fewer = adaptation._differences(errors, 20).split("; ")[0]  # two standard errors: 28 to 31 points
    assert fewer == f"{adaptation.SHIFTS[0][0]}: adabn and norm below source, prior above adabn"
    errors["adabn"] = errors["norm"] = errors["tent"] = errors["prior"] = errors["source"]
    assert adaptation._differences(errors, 360).split("; ")[0] == f"{adaptation.SHIFTS[0][0]}: none below source"
