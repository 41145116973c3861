"""``normapps stylize``: stylize a photo or a folder of photos with a shipped or trained style-transfer model.

::

    normapps stylize --content IMAGE|FOLDER|NAME --style IMAGE|NAME [--style IMAGE|NAME ... --style-weights W W ...]
                     [--alpha 1.0] [--preserve-color] [--mask PNG [--mask-resize]] [--method adain|wct|cin|fast]
                     [--size 512] [--checkpoint FILE] [--encoder-weights FILE] [--decoder-weights FILE]
                     --out PATH [--overwrite] [--device cpu]

Methods (:func:`normapps.tasks.style.checkpoints.load_stylizer`; without ``--checkpoint`` the shipped
``checkpoints/style_<method>.pt``):

``adain``  arbitrary style transfer (Huang & Belongie 2017): any style image. ``--encoder-weights``
           with ``--decoder-weights`` (together, instead of ``--checkpoint``) load the AdaIN authors'
           published ``vgg_normalised.pth`` (or torchvision's ``vgg19-*.pth``) and ``decoder.pth``.
``wct``    whitening and colouring transform, coarse to fine (Li et al. 2017): any style image.
``cin``    conditional instance normalization (Dumoulin et al. 2017): the styles it was trained on, by name.
``fast``   feed-forward network of Johnson et al. (2016): its one trained style; ``--style`` may be left out.

Inputs
    ``--content`` is an image file, a folder (every image file directly in it, sorted by name) or the
    name of a photo bundled with the installed packages (:func:`normapps.data.style.content_names`:
    chelsea, coffee, ...). ``--style`` is an image file or the name of an embedded generated style
    (:func:`normapps.data.style.style_names`: mosaic, waves, ...); an existing file of that name wins.
    Greyscale, transparent (composited over white) and 16-bit images are read as
    :func:`normapps.data.images.load_image` describes; inputs are never modified.

Sizes
    Each content image is resized (bilinear, antialiased) so that its *longer* side is ``--size``,
    keeping its aspect ratio, smaller images upscaled; the output has that size. A file larger than
    that is downscaled with one warning line (in a folder: one line for all of them; none for the
    bundled photos). Style images are resized so that their *shorter* side is ``--size`` (the longer
    side capped at four times that, with a warning), as the AdaIN authors' test script does
    (``style_size``), independently of the content: the style's texture then has the same scale for
    every content of a folder, and the style is encoded once. Embedded styles are generated at
    ``--size`` x ``--size``. A content so elongated that its shorter side would fall under 8 pixels
    (the encoders downsample by 8) is refused.

Controls
    ``--style-weights`` (adain, wct, cin): one non-negative weight per ``--style``, normalized to sum
    1 (default: equal weights); adain and wct take the weighted sum of each style's transferred
    features, cin the weighted mean of the styles' (gamma, beta).
    ``--alpha`` (adain, wct): content-style trade-off in [0, 1] on the encoder features (1: full style).
    ``--preserve-color`` (adain, wct): each style image's RGB mean and covariance are first matched
    to the content's (:func:`normapps.tasks.style.transfer.preserve_color`), so the output keeps the
    content's colours. The style images then depend on the content: with a folder the styles are
    encoded again for every content image instead of once.
    ``--mask`` (adain, wct, cin): spatial control with exactly two styles: the first style inside the
    mask (white, luminance >= 0.5) and the second outside. The mask must have the content's original
    size (every content's, for a folder) unless ``--mask-resize`` is given; excludes ``--style-weights``.

Outputs
    For one content image, ``--out`` is the output file (``.png``, ``.jpg``, ``.bmp``, ``.tif``) or an
    existing folder to write ``<stem>.<suffix>`` into. For a folder, ``--out`` is a folder (created if
    missing) with one output per input, same stem; the suffix is the input's where it can be written,
    else ``.png``. Every output is checked before anything is computed: none is replaced without
    ``--overwrite``, none may be an input. Files are written atomically. The command ends with one
    line saying where it wrote and the stylization time per image (a style encoded once is timed apart).

Bad input -- missing or unreadable files, an empty folder, a mask of another size, a weight count
that differs from the style count, a method / option combination that does not exist -- ends with
exit status 2 and one line ``normapps stylize: error: ...`` on stderr, before anything is written
(every content file's header is read first; a file that passes that check but fails to decode
stops a folder run there, and the line says how many outputs were written before it). Warnings are
one line each on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from normapps.cli.arguments import InputError, torch_device
from normapps.data.images import SAVE_FORMATS, list_images, load_image, load_mask, save_image
from normapps.data.style import content_names, content_paths, style_image, style_names
from normapps.io import check_overwrite
from normapps.tasks.style.transfer import preserve_color

T = TypeVar("T")
PROG = "normapps stylize"
METHODS = ("adain", "wct", "cin", "fast")
#: Methods that take any style image (and so support --preserve-color and encode a style once per folder).
IMAGE_METHODS = ("adain", "wct")
#: Smallest ``--size``.
MIN_SIZE = 16
#: Smallest shorter side of a resized content image: the encoders downsample by 8 to relu4_1.
MIN_SIDE = 8
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} ({PROG} --help lists the options)")


def load_stylizer(method: str, checkpoint: str | None = None, *, encoder_weights: str | None = None,
                  decoder_weights: str | None = None) -> nn.Module:
    """:func:`normapps.tasks.style.checkpoints.load_stylizer`, imported on first use (the models are not
    needed to parse options or report bad input)."""
    from normapps.tasks.style.checkpoints import load_stylizer as load

    return load(method, checkpoint, encoder_weights=encoder_weights, decoder_weights=decoder_weights)


# ---------------------------------------------------------------------------------------------- options


def _size(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"expected an integer >= {MIN_SIZE}, got {text}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _weight(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = _Parser(prog=PROG, description="Stylize a photo or a folder of photos (AdaIN, WCT, CIN or a fast network).",
                     epilog="Content images are resized so that their longer side is --size, style images so that their "
                            "shorter side is --size. With a folder the style is encoded once (adain, wct) unless "
                            "--preserve-color is given, which matches the style images' colours to each content image.")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--content", required=True, metavar="IMAGE|FOLDER|NAME",
                        help=f"an image file, a folder of images, or a bundled photo ({', '.join(content_names())})")
    inputs.add_argument("--style", action="append", metavar="IMAGE|NAME",
                        help="a style image file or an embedded style (" + ", ".join(style_names()) + "); repeat for "
                             "several styles; for cin one of its trained style names; optional for fast")
    inputs.add_argument("--mask", metavar="PNG", help="with two styles: the first inside the mask (white), the second outside")
    inputs.add_argument("--mask-resize", action="store_true", help="resize a mask of another size to the content's")
    controls = parser.add_argument_group("controls")
    controls.add_argument("--method", choices=METHODS, default="adain", help="(default: %(default)s)")
    controls.add_argument("--style-weights", type=_weight, nargs="+", metavar="W",
                          help="one weight >= 0 per --style, normalized to sum 1 (default: equal)")
    controls.add_argument("--alpha", type=_alpha, default=1.0, help="content-style trade-off in [0, 1] (default: %(default)s)")
    controls.add_argument("--preserve-color", action="store_true", help="keep the content's colours (adain, wct)")
    controls.add_argument("--size", type=_size, default=512, metavar="N",
                          help="longer side of the content, shorter side of the styles, in pixels (default: %(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", metavar="FILE", help="a style checkpoint (default: the shipped checkpoints/style_<method>.pt)")
    model.add_argument("--encoder-weights", metavar="FILE", help="VGG-19 encoder weights: vgg_normalised.pth or torchvision's vgg19-*.pth")
    model.add_argument("--decoder-weights", metavar="FILE", help="decoder weights in the AdaIN port's layout (decoder.pth)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="PATH", help="output image file (one content) or folder (a folder of contents)")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs (else refuse)")
    run.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    return parser


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """``weights`` (one per style, >= 0) scaled to sum 1; equal weights when ``None``."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise InputError(f"--style-weights has {len(weights)} value{'s' * (len(weights) != 1)} but {count} "
                         f"style{'s were' if count != 1 else ' was'} given; give one weight per --style")
    total = sum(weights)
    if total <= 0.0:
        raise InputError("--style-weights are all zero; at least one style needs a positive weight")
    return [w / total for w in weights]


def check_options(options: argparse.Namespace) -> None:
    """Refuse option combinations that do not exist, before anything is read."""
    styles = options.style or []
    if options.method in IMAGE_METHODS and not styles:
        raise InputError(f"--method {options.method} needs at least one --style: an image file or an embedded style "
                         f"({', '.join(style_names())})")
    if options.method == "cin" and not styles:
        raise InputError("--method cin needs --style NAME, one of the styles it was trained on")
    if options.method == "fast" and len(styles) > 1:
        raise InputError(f"--method fast stylizes with its one trained style; got {len(styles)} --style values")
    if options.alpha != 1.0 and options.method not in IMAGE_METHODS:
        raise InputError(f"--alpha blends content and style features of adain and wct; --method {options.method} has no "
                         "such features (leave --alpha out)")
    weights_files = [flag for flag, value in (("--encoder-weights", options.encoder_weights),
                                              ("--decoder-weights", options.decoder_weights)) if value is not None]
    if weights_files:
        if options.method != "adain":
            raise InputError(f"{' and '.join(weights_files)} are for --method adain (the AdaIN authors' published weights), "
                             f"not {options.method}")
        if options.checkpoint is not None:
            raise InputError("give either --checkpoint or --encoder-weights with --decoder-weights, not both")
        if len(weights_files) == 1:
            raise InputError("give --encoder-weights and --decoder-weights together: a decoder only inverts the encoder it "
                             "was trained with (e.g. vgg_normalised.pth with decoder.pth)")
    if options.preserve_color and options.method not in IMAGE_METHODS:
        raise InputError(f"--preserve-color matches style images to the content, but --method {options.method} has its "
                         f"styles in its weights; use --method adain or wct")
    if options.mask is not None:
        if len(styles) != 2:
            raise InputError(f"--mask needs exactly two --style values (the first inside the mask, the second outside), "
                             f"got {len(styles)}")
        if options.style_weights is not None:
            raise InputError("--mask and --style-weights exclude each other: with a mask each region takes one style")
    elif options.mask_resize:
        raise InputError("--mask-resize applies to --mask; no --mask was given")
    if options.style_weights is not None:
        normalized_weights(options.style_weights, max(len(styles), 1))


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class Content:
    """One content image to stylize: where it comes from, its original size and where its output goes."""

    source: Path
    stem: str
    size: tuple[int, int]  # (height, width), after the EXIF orientation
    bundled: bool = False  # a photo that ships with an installed package (not the user's file)
    out: Path | None = None


def original_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`~normapps.data.images.load_image` reads it (EXIF
    orientation applied), from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError:
        raise InputError(f"cannot read '{path}': no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read '{path}': it is a folder, not an image file") from None
    except PermissionError:
        raise InputError(f"cannot read '{path}': permission denied") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"cannot read '{path}': not an image file") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read '{path}': {err}") from None
    return height, width


def working_size(size: tuple[int, int], longer: int) -> tuple[int, int]:
    """``size`` ``(height, width)`` scaled so that its longer side is ``longer``."""
    scale = longer / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _output_suffix(source: Path) -> str:
    return source.suffix if source.suffix.lower() in SAVE_FORMATS else ".png"


def find_contents(spec: str) -> tuple[list[Content], bool]:
    """The content images ``--content`` names, and whether it is a folder."""
    path = Path(spec)
    if path.is_dir():
        try:
            files = list_images(path)
        except OSError as err:
            raise InputError(f"--content: {err}") from None
        return [Content(file, file.stem, original_size(file)) for file in files], True
    if not path.exists() and spec in content_names():
        file = content_paths()[spec]
        return [Content(file, spec, original_size(file), bundled=True)], False
    if not path.exists():
        raise InputError(f"--content {spec}: no such file or folder, and not a bundled photo ({', '.join(content_names())})")
    return [Content(path, path.stem, original_size(path))], False


def plan_outputs(contents: list[Content], folder: bool, out: Path) -> None:
    """Set each content's output path (see the module docstring); refuse names that collide."""
    if not folder:
        content = contents[0]
        if out.is_dir():
            content.out = out / f"{content.stem}{_output_suffix(content.source)}"
        elif out.suffix.lower() not in SAVE_FORMATS:
            raise InputError(f"--out {out}: expected an image file name ending in {', '.join(SAVE_FORMATS)}, "
                             "or an existing folder")
        else:
            content.out = out
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; with a folder of content images --out is a folder")
    if out.resolve() == contents[0].source.parent.resolve():
        raise InputError(f"--out {out} is the content folder; choose another folder (inputs are never changed)")
    taken: dict[Path, Path] = {}
    for content in contents:
        content.out = out / f"{content.stem}{_output_suffix(content.source)}"
        if content.out in taken:
            raise InputError(f"content images {taken[content.out].name} and {content.source.name} would both be written "
                             f"to {content.out}; rename one of them")
        taken[content.out] = content.source


def check_outputs(contents: list[Content], inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input, or that exists without ``overwrite``; nothing is written yet."""
    resolved_inputs = {path.resolve(): path for path in inputs}
    for content in contents:
        assert content.out is not None
        if content.out.resolve() in resolved_inputs:
            raise InputError(f"output {content.out} is the input {resolved_inputs[content.out.resolve()]}; choose another "
                             "--out (inputs are never changed)")
        check_overwrite(content.out, overwrite)


def _with_warnings(report: Callable[[str], None], load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``load``, passing each warning it raises to ``report`` as one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load(*args, **kwargs)
        finally:
            for warning in caught:
                report(f"{PROG}: warning: {' '.join(str(warning.message).split())}")


def _print(line: str) -> None:
    print(line, file=sys.stderr)


def load_styles(specs: Sequence[str], size: int) -> list[Tensor]:
    """The style images ``(1, 3, h, w)``: files with their shorter side resized to ``size`` (the longer
    side capped at ``4 * size``, with a warning), embedded styles generated at ``size`` x ``size``."""
    images = []
    for spec in specs:
        path = Path(spec)
        if path.exists() or spec not in style_names():
            if not path.exists():
                raise InputError(f"--style {spec}: no such file, and not an embedded style ({', '.join(style_names())})")
            try:
                image = _with_warnings(_print, load_image, path, size=size, max_side=4 * size)
            except (OSError, ValueError) as err:
                raise InputError(f"--style: {err}") from None
        else:
            image = style_image(spec, size)
        images.append(image[None])
    return images


def check_trained_styles(stylizer: nn.Module, method: str, specs: Sequence[str]) -> list[str]:
    """For cin and fast, ``--style`` names trained styles: check them; returns the names to use."""
    trained = list(stylizer.styles)
    unknown = [spec for spec in specs if spec not in trained]
    if method == "cin" and unknown:
        raise InputError(f"--method cin was trained on the styles {', '.join(trained)}; --style {unknown[0]} is not one of "
                         "them (cin takes the names of its trained styles, not image files; use adain or wct for any image)")
    if method == "fast" and unknown:
        raise InputError(f"--method fast was trained on the style {', '.join(trained)} only; got --style {unknown[0]} "
                         "(leave --style out, or use adain or wct for another style)")
    return list(specs) if specs else trained


class Masks:
    """The ``--mask`` as two style regions ``(1, 2, H, W)`` (first style inside, second outside) at each
    content's working size; loaded once per original content size."""

    def __init__(self, path: Path, resize: bool) -> None:
        self.path, self.resize = path, resize
        self._loaded: dict[tuple[int, int], Tensor] = {}

    def check(self, content: Content) -> None:
        """Raise :class:`InputError` if the mask does not fit ``content`` (its size, unless resizing)."""
        self._original(content)

    def _original(self, content: Content) -> Tensor:
        if content.size not in self._loaded:
            if not self.resize:
                try:
                    height, width = original_size(self.path)
                except InputError as err:
                    raise InputError(f"--mask: {err}") from None
                if (height, width) != content.size:
                    raise InputError(f"--mask '{self.path}' is {width}x{height} pixels (width x height) but the content "
                                     f"'{content.source}' is {content.size[1]}x{content.size[0]}; give a mask of the content's "
                                     "size, or pass --mask-resize to resize it")
            try:
                self._loaded[content.size] = load_mask(self.path, content.size, resize=self.resize)
            except (OSError, ValueError) as err:
                raise InputError(f"--mask: {err}") from None
        return self._loaded[content.size]

    def regions(self, content: Content, size: tuple[int, int]) -> Tensor:
        """``(1, 2, H, W)`` at ``size``: the mask and its complement."""
        mask = self._original(content)
        if tuple(mask.shape[-2:]) != size:
            mask = F.interpolate(mask[None], size=size, mode="nearest")[0]
        return torch.cat([mask, 1.0 - mask])[None]


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Settings:
    """Everything a forward pass needs besides the content."""

    method: str
    styles: list[Tensor]          # style images (1, 3, h, w) on the device; adain / wct
    style_names: list[str]        # cin
    weights: list[float] | None   # None: one style, or a mask
    alpha: float
    preserve_color: bool


def stylize_one(stylizer: nn.Module, content: Tensor, settings: Settings, style_features: Any,
                regions: Tensor | None) -> Tensor:
    """Stylize ``content`` ``(1, 3, H, W)``; ``style_features`` are the encoded styles (adain / wct) or
    ``None`` to encode them here (for ``--preserve-color``, against this content)."""
    kwargs: dict[str, Any] = {}
    if settings.weights is not None:
        kwargs["weights"] = settings.weights
    if regions is not None:
        kwargs["mask"] = regions
    if settings.method in IMAGE_METHODS:
        if style_features is None:
            styles = settings.styles
            if settings.preserve_color:
                styles = [preserve_color(style, content) for style in styles]
            style_features = stylizer.encode_style(styles)
        return stylizer(content, style_features=style_features, alpha=settings.alpha, **kwargs)
    if settings.method == "cin":
        return stylizer(content, style_names=settings.style_names, **kwargs)
    return stylizer(content, **kwargs)


def check_sizes(contents: list[Content], longer: int) -> None:
    """Refuse a content so elongated that its shorter side at ``--size`` falls under :data:`MIN_SIDE`."""
    for content in contents:
        size = working_size(content.size, longer)
        if min(size) < MIN_SIDE:
            raise InputError(f"content '{content.source}' is {content.size[1]}x{content.size[0]} pixels (width x height): at "
                             f"--size {longer} its shorter side would be {min(size)} pixels, under the {MIN_SIDE} the "
                             "encoders need; give a larger --size")


def _load_content(content: Content, longer: int, device: torch.device,
                  report: Callable[[str], None]) -> tuple[Tensor, tuple[int, int]]:
    size = working_size(content.size, longer)
    try:
        image = _with_warnings(report, load_image, content.source, size=size)
    except (OSError, ValueError) as err:
        raise InputError(str(err)) from None
    return image[None].to(device), size


def _warn_downscaled(contents: list[Content], folder: bool, longer: int) -> None:
    larger = [c for c in contents if max(c.size) > longer and not c.bundled]
    if not larger:
        return
    biggest = max(larger, key=lambda c: c.size[0] * c.size[1])
    h, w = working_size(biggest.size, longer)
    if folder:
        _print(f"{PROG}: warning: {len(larger)} of {len(contents)} content images are larger than --size {longer} and are "
               f"downscaled (the largest, '{biggest.source.name}', from {biggest.size[1]}x{biggest.size[0]} to {w}x{h}); "
               "the outputs have the downscaled sizes")
    else:
        _print(f"{PROG}: warning: '{biggest.source}' is {biggest.size[1]}x{biggest.size[0]} pixels (width x height); "
               f"stylized and written at {w}x{h} (--size {longer})")


@dataclass
class Result:
    """What the command did: the contents with their outputs, whether ``--content`` was a folder, the
    seconds spent stylizing each image and encoding the styles once (``None``: not encoded once)."""

    contents: list[Content]
    folder: bool
    seconds: list[float]
    encode_seconds: float | None


def stylize_command(options: argparse.Namespace) -> Result:
    """Run the command: check everything, then stylize and write each content image."""
    check_options(options)
    contents, folder = find_contents(options.content)
    plan_outputs(contents, folder, Path(options.out))
    style_specs = options.style or []
    inputs = [c.source for c in contents] + [Path(s) for s in style_specs if Path(s).exists()]
    inputs += [Path(p) for p in (options.mask, options.checkpoint, options.encoder_weights, options.decoder_weights) if p]
    check_outputs(contents, inputs, options.overwrite)
    check_sizes(contents, options.size)

    masks = Masks(Path(options.mask), options.mask_resize) if options.mask else None
    if masks is not None:
        for content in contents:
            masks.check(content)
    styles = load_styles(style_specs, options.size) if options.method in IMAGE_METHODS else []
    stylizer = _with_warnings(_print, load_stylizer, options.method, options.checkpoint,
                              encoder_weights=options.encoder_weights, decoder_weights=options.decoder_weights)
    trained = check_trained_styles(stylizer, options.method, style_specs) if options.method not in IMAGE_METHODS else []
    device = torch.device(options.device)
    stylizer = stylizer.to(device).eval()
    count = len(style_specs)
    settings = Settings(options.method, [s.to(device) for s in styles], trained,
                        normalized_weights(options.style_weights, count) if count > 1 and masks is None else None,
                        options.alpha, options.preserve_color)
    _warn_downscaled(contents, folder, options.size)

    result = Result(contents, folder, [], None)
    with torch.inference_mode():
        style_features = None
        if options.method in IMAGE_METHODS and not options.preserve_color:
            start = time.perf_counter()
            style_features = stylizer.encode_style(settings.styles)
            result.encode_seconds = time.perf_counter() - start
        bar = tqdm(contents, desc="stylize", unit="image", file=sys.stderr, disable=not folder)
        report = _print if not folder else lambda line: bar.write(line, file=sys.stderr)
        for content in bar:
            assert content.out is not None
            try:
                image, size = _load_content(content, options.size, device, report)
            except InputError as err:
                written = f" ({len(result.seconds)} of {len(contents)} outputs were written before it)" if result.seconds else ""
                raise InputError(f"{err}{written}") from None
            regions = masks.regions(content, size).to(device) if masks is not None else None
            start = time.perf_counter()
            output = stylize_one(stylizer, image, settings, style_features, regions).cpu()  # waits for the device
            result.seconds.append(time.perf_counter() - start)
            save_image(output[0], content.out, overwrite=options.overwrite)
        bar.close()
    return result


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1.0 else f"{seconds * 1000:.0f} ms"


def main(args: Sequence[str]) -> int:
    """Entry point of ``normapps stylize``; returns the exit status (2 for bad input, with one line on stderr)."""
    try:
        options = build_parser().parse_args(list(args))
        result = stylize_command(options)
    except (ValueError, OSError) as err:  # InputError, FileExistsError, and what the loaders raise
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    total = sum(result.seconds)
    if result.encode_seconds is not None:
        encoding = f"; style encoded {'once ' if result.folder else ''}in {_duration(result.encode_seconds)}"
    elif options.preserve_color and result.folder:
        encoding = "; styles encoded for every image (--preserve-color)"
    else:
        encoding = ""
    if result.folder:
        _print(f"{PROG}: wrote {len(result.contents)} images to {options.out} in {_duration(total)}: "
               f"{_duration(total / len(result.seconds))} per image{encoding}")
    else:
        height, width = working_size(result.contents[0].size, options.size)
        _print(f"{PROG}: wrote {result.contents[0].out} ({width}x{height}) in {_duration(total)}{encoding}")
    return 0
