"""The demo report: one HTML page with a section per task suite and PNG figures beside it.

A task suite adds its section with one decorated function in a new module of
:mod:`normapps.report.sections` (modules there are imported automatically)::

    @section("Style transfer", order=30)
    def style_section(ctx: ReportContext) -> Section:
        ...  # train / evaluate, honouring ctx.fast
        return Section(html="<p>...</p>", figures=[ctx.save_figure(fig, "style", "Stylized images")])
"""

from .builder import Figure, ReportContext, Section, SectionSpec, build_report, registered_sections, section

__all__ = ["Figure", "ReportContext", "Section", "SectionSpec", "build_report", "registered_sections", "section"]
