"""Section registry, rendering and atomic writing of the report."""

from __future__ import annotations

import contextlib
import datetime
import html
import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from normapps.io import atomic_path, atomic_write, check_overwrite

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure


@dataclass(frozen=True)
class Figure:
    """A PNG file written next to the report, with its caption."""

    filename: str
    """Path relative to the report's folder."""
    caption: str


@dataclass
class Section:
    """What a section function returns: an HTML fragment and the figures shown below it."""

    html: str
    figures: list[Figure] = field(default_factory=list)


@dataclass
class ReportContext:
    """What every section function receives.

    Attributes:
        out_dir: folder of the report; figures are written here.
        fast: run the smallest experiment that still exercises the code (for tests and smoke runs).
        seed: seed for every experiment of the report.
        progress: called with a short message as a section makes progress.
    """

    out_dir: Path
    fast: bool = False
    seed: int = 0
    progress: Callable[[str], None] = lambda message: None

    def save_figure(self, fig: MplFigure, name: str, caption: str) -> Figure:
        """Write ``fig`` as ``<out_dir>/<name>.png`` (atomically) and return its :class:`Figure`.

        Make ``fig`` with ``matplotlib.figure.Figure()`` rather than pyplot: no backend or global
        state is involved, so sections work headless and leak no open figures.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"figure name must be letters, digits, '_', '.' or '-', got {name!r}")
        filename = f"{name}.png"
        with atomic_path(self.out_dir / filename) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return Figure(filename, caption)


@dataclass(frozen=True)
class SectionSpec:
    """A registered section: ``render(ctx)`` makes it; sections appear by increasing ``order``."""

    name: str
    title: str
    order: int
    render: Callable[[ReportContext], Section]


_SECTIONS: dict[str, SectionSpec] = {}


def section(title: str, order: int = 100) -> Callable[[Callable[[ReportContext], Section]], Callable[[ReportContext], Section]]:
    """Register the decorated function ``f(ctx: ReportContext) -> Section`` as a report section.

    The section's name is the function's name; it must be unique.
    """

    def register(render: Callable[[ReportContext], Section]) -> Callable[[ReportContext], Section]:
        name = render.__name__
        if name in _SECTIONS:
            raise ValueError(f"a report section named {name!r} is already registered")
        _SECTIONS[name] = SectionSpec(name, title, order, render)
        return render

    return register


def registered_sections() -> list[SectionSpec]:
    """Every registered section (the built-in ones included), in report order."""
    importlib.import_module("normapps.report.sections")
    return sorted(_SECTIONS.values(), key=lambda spec: (spec.order, spec.name))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
section { border-top: 1px solid #ddd; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9rem; }
"""


def render_html(title: str, parts: list[tuple[SectionSpec, Section]]) -> str:
    """The full HTML page for already rendered sections."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    toc = "".join(f'<li><a href="#{spec.name}">{html.escape(spec.title)}</a></li>' for spec, _ in parts)
    body = []
    for spec, part in parts:
        figures = "".join(
            f'<figure><img src="{html.escape(fig.filename)}" alt="{html.escape(fig.caption)}">'
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
            for fig in part.figures
        )
        body.append(f'<section id="{spec.name}"><h2>{html.escape(spec.title)}</h2>{part.html}{figures}</section>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="meta">Generated {stamp} by <code>normapps demo</code>.</p>'
        f"<ul>{toc}</ul>{''.join(body)}</body></html>\n"
    )


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (None: unchanged), then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        if count < 1:
            raise ValueError(f"threads must be >= 1 or None, got {count!r}")
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_report(
    out_dir: str | Path,
    sections: Iterable[SectionSpec | str] | None = None,
    fast: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    title: str = "normapps: normalization techniques at work",
    overwrite: bool = False,
    threads: int | None = 1,
) -> Path:
    """Render sections into ``<out_dir>/report.html`` and return its path.

    Args:
        out_dir: folder of the report and its figures (created if missing).
        sections: sections to render, as specs or registered names; all registered ones if None.
        fast: passed to every section (smallest experiments).
        seed: passed to every section.
        progress: called with progress messages.
        title: heading of the page.
        overwrite: replace an existing ``report.html`` (and figures of the same names). If false,
            an existing report is refused before any experiment runs.
        threads: torch intra-op threads while the sections run (the previous count is restored);
            None keeps the current count. The default 1: the experiments are small, and more threads
            than free cores stall when other processes share them (several times slower).

    Raises:
        ValueError: if a section name is not registered.
        FileExistsError: if ``report.html`` exists and ``overwrite`` is false.
    """
    out = Path(out_dir)
    path = out / "report.html"
    check_overwrite(path, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    available = {spec.name: spec for spec in registered_sections()}
    if sections is None:
        specs = list(available.values())
    else:
        specs = []
        for item in sections:
            if isinstance(item, str) and item not in available:
                raise ValueError(f"unknown report section {item!r}; registered: {', '.join(available)}")
            specs.append(available[item] if isinstance(item, str) else item)
    ctx = ReportContext(out_dir=out, fast=fast, seed=seed, progress=progress)
    parts = []
    with torch_threads(threads):
        for spec in specs:
            progress(f"section: {spec.title}")
            parts.append((spec, spec.render(ctx)))
    return atomic_write(path, render_html(title, parts), overwrite=overwrite)
