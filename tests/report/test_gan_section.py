"""Tests of the report's GAN section (normapps.report.sections.gan), in fast mode."""

import re
from html import escape

import pytest

from normapps.report import build_report
from normapps.report.sections import gan
from normapps.tasks.gan.checkpoints import SHIPPED_COMMAND

MISSING = [path for path in (gan.checkpoint_path(), gan.features_path()) if not path.is_file()]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(bool(MISSING), reason=f"shipped files missing: {', '.join(map(str, MISSING))}")
def test_fast_section_renders_the_metric_table_and_writes_every_figure(tmp_path):
    html = build_report(tmp_path, sections=["gan_section"], fast=True).read_text()
    section = html[html.index('<section id="gan_section">'):]
    number = r"-?[0-9.]+(e[-+][0-9]+)?"
    for label in ("class accuracy", "FD", "KID", "intra-class FD"):
        pattern = rf"<tr><td>{label}[^<]*</td><td>{number}( &plusmn; {number})?</td><td>[^<]+</td>" \
                  rf"<td>{number}( &plusmn; {number})?</td><td>[^<]+</td></tr>"
        assert re.search(pattern, section), label
    assert "1000 images" not in section and "100 images, 10 per class" in section  # fast mode: 10 per class
    assert "360 test / 360 generated" in section and "360 test / 360 val" in section and "Fast mode" in section
    for name in ("gan_samples", "gan_morph", "gan_interpolation"):
        assert f'<img src="{name}.png"' in section
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_a_missing_shipped_generator_is_named_with_its_command_and_the_report_still_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(gan, "checkpoint_path", lambda: tmp_path / "gan_digits.pt")
    html = build_report(tmp_path / "report", sections=["gan_section"], fast=True).read_text()
    assert "Not available" in html and "gan_digits.pt" in html and escape(SHIPPED_COMMAND) in html
    assert "<img" not in html
