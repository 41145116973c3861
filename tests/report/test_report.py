import pytest
from matplotlib.figure import Figure as MplFigure

from normapps.report import Section, build_report, builder, registered_sections, section


@pytest.fixture
def extra_section(monkeypatch):
    """Register a cheap extra section for one test only."""
    registered_sections()  # import the built-in sections before copying the registry
    monkeypatch.setattr(builder, "_SECTIONS", dict(builder._SECTIONS))
    seen = []

    @section("An extra section", order=99)
    def extra(ctx):
        seen.append(ctx)
        fig = MplFigure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [1, 0])
        return Section(html="<p>extra body</p>", figures=[ctx.save_figure(fig, "extra_plot", "A line")])

    return seen


def test_registered_extra_section_is_rendered_with_its_figure(tmp_path, extra_section):
    assert "extra" in [spec.name for spec in registered_sections()]
    path = build_report(tmp_path / "out", sections=["extra"], seed=7)
    html = path.read_text()
    assert path == tmp_path / "out" / "report.html"
    assert "An extra section" in html and "<p>extra body</p>" in html
    assert '<img src="extra_plot.png"' in html and "A line" in html
    assert (tmp_path / "out" / "extra_plot.png").read_bytes().startswith(b"\x89PNG")
    assert extra_section[0].seed == 7 and not extra_section[0].fast
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extra_plot.png", "report.html"]  # no temp files


def test_all_sections_render_in_order_in_fast_mode(tmp_path, extra_section):
    html = build_report(tmp_path, fast=True).read_text()
    assert html.index("Classification on handwritten digits") < html.index("An extra section")
    assert extra_section[0].fast


def test_duplicate_and_unknown_sections_raise(tmp_path, extra_section):
    with pytest.raises(ValueError, match="already registered"):
        section("Again")(lambda ctx: Section(""))
        section("Again")(lambda ctx: Section(""))
    with pytest.raises(ValueError, match="unknown report section 'nope'"):
        build_report(tmp_path, sections=["nope"])


def test_failed_section_leaves_no_report(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "_SECTIONS", {})

    @section("Broken")
    def broken(ctx):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_report(tmp_path, sections=["broken"])
    assert not (tmp_path / "report.html").exists()


def test_figure_names_must_be_plain(tmp_path):
    ctx = builder.ReportContext(out_dir=tmp_path)
    with pytest.raises(ValueError, match="figure name"):
        ctx.save_figure(MplFigure(), "../escape", "no")


def test_existing_report_is_kept_unless_overwrite(tmp_path, extra_section):
    (tmp_path / "report.html").write_text("mine")
    with pytest.raises(FileExistsError, match=r"report\.html already exists; pass --overwrite"):
        build_report(tmp_path, sections=["extra"])
    assert (tmp_path / "report.html").read_text() == "mine"
    assert not extra_section  # refused before any section ran
    build_report(tmp_path, sections=["extra"], overwrite=True)
    assert "extra body" in (tmp_path / "report.html").read_text()


def test_classification_text_is_derived_from_the_data(tmp_path, monkeypatch):
    from normapps.data import DigitsDataModule

    html = build_report(tmp_path, sections=["classification_section"], fast=True).read_text()
    sizes = DigitsDataModule().split_sizes()
    assert f"{sizes['test']} test images" in html and "split 60/20/20" in html
    monkeypatch.setattr(DigitsDataModule, "split_sizes", lambda self: {"train": 100, "val": 50, "test": 50})
    html = build_report(tmp_path / "other", sections=["classification_section"], fast=True).read_text()
    assert "50 test images" in html and "split 50/25/25" in html and "360" not in html
