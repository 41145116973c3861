"""Tests of the report's efficient-models section (normapps.report.sections.efficient), in fast mode."""

import math
import re

import torch

from normapps.report import build_report
from normapps.report.sections import efficient


def tables(html: str) -> list[str]:
    section = html[html.index('<section id="efficient_section">'):]
    section = section[:section.index("</section>")]
    return re.findall(r"<table>.*?</table>", section)


def numbers(row: str) -> list[float]:
    return [float(cell.replace(",", "")) for cell in re.findall(r"<td>([-\d.,]+)</td>", row)]


def test_fast_section_renders_accuracy_and_latency_tables_and_its_figure(tmp_path):
    threads = torch.get_num_threads()
    html = build_report(tmp_path / "a", sections=["efficient_section"], fast=True, seed=2).read_text()
    assert torch.get_num_threads() == threads  # the report runs its sections on one thread, then restores the count
    accuracy, latency = tables(html)
    rows = re.findall(r"<tr><td>.*?</tr>", accuracy)
    assert [re.match(r"<tr><td>([^<]+)</td>", r).group(1).replace(" (clamped)", "") for r in rows] == [
        "original", *(f"pruned {r:g}" for r in efficient.RATIOS)]
    values = [numbers(r) for r in rows]
    params, flops = [v[0] for v in values], [v[1] for v in values]
    assert params == sorted(params, reverse=True) and flops == sorted(flops, reverse=True) and flops[-1] < flops[0]
    for v in values:  # params, FLOPs, FLOP ratio, then one accuracy per variant
        assert len(v) == 3 + len(efficient.VARIANTS)
        assert math.isclose(v[2], v[1] / flops[0], abs_tol=1e-3)
        assert all(0 <= a <= 100 for a in v[3:])
    names = re.findall(r"<tr><td>([^<]+)</td>", latency)
    assert names == ["original", "original, folded", *(f"pruned {r:g}{s}" for r in efficient.RATIOS for s in ("", ", folded"))]
    for row in re.findall(r"<tr><td>.*?</tr>", latency):
        ratio, ms, *speeds = numbers(row)
        assert 0 < ratio <= 1 and ms > 0 and len(speeds) == 2 and all(math.isfinite(s) and s > 0 for s in speeds)
    assert "Fast mode" in html and "not meaningful" in html and "seed 2" in html and "batch 64" in html
    assert "python benchmarks/efficient.py" in html and "benchmarks/results/efficient.md" in html
    assert '<img src="efficient_accuracy_flops.png"' in html
    assert (tmp_path / "a" / "efficient_accuracy_flops.png").read_bytes().startswith(b"\x89PNG")


def test_latency_summary_puts_each_flop_ratio_next_to_its_latency_ratio():
    flops = {"original": 100, **{f"pruned {r:g}": int(100 * (1 - r)) for r in efficient.RATIOS}}
    medians = {"original": 2.0, **{f"pruned {r:g}": 1.0 for r in efficient.RATIOS}}
    minima = {"original": 1.0, **{f"pruned {r:g}": 0.25 for r in efficient.RATIOS}}
    text = efficient._latency_summary(flops, medians, minima, 100)
    assert text.startswith("Against the original: 30% pruned: FLOPs x0.70, latency x0.50 (minima x0.25);")
    assert "70% pruned: FLOPs x0.30, latency x0.50 (minima x0.25)." in text
