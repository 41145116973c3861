"""Stylizer files: what ``normapps stylize`` loads, and how trained tasks become one.

A stylizer file is one ``torch.save``'d dict::

    {"format": "normapps-stylizer", "version": 1, "method": "adain" | "wct" | "cin" | "fast",
     "config": {"modules": {name: constructor arguments}, "levels": [...] (wct), "styles": [...], ...},
     "state_dicts": {"encoder": ..., "decoder": ...}            # adain
                  | {"encoder": ..., "decoders": {level: ...}}  # wct
                  | {"network": ...},                           # cin, fast
     "styles": [style names] (cin, fast; [] otherwise),
     "precision": "float16" | "float32", "float16_max_error": float}

The modules are rebuilt from ``config["modules"]`` (the arguments of
:class:`~normapps.models.VGGEncoder`, :class:`~normapps.models.VGGDecoder` and
:class:`~normapps.models.TransformerNet`) and the state dicts loaded into them. Floating-point
tensors are stored in float16 when the stylizer's outputs on a fixed probe stay within
:data:`FLOAT16_TOLERANCE` of float32 (half the file size), else in float32; they are loaded back
as float32.

::

    stylizer = load_stylizer("adain")                         # checkpoints/style_adain.pt of the repository
    with torch.inference_mode():
        features = stylizer.encode_style([style])             # once for a folder of contents
        out = stylizer(content, style_features=features, alpha=0.8)
    load_stylizer("cin")(content, style_names=["mosaic", "waves"], weights=[0.7, 0.3])
    load_stylizer("adain", encoder_weights="vgg_normalised.pth", decoder_weights="decoder.pth")

The shipped checkpoints (``checkpoints/style_*.pt``, see ``checkpoints/MANIFEST``) are trained on this
CPU-only project's embedded data with a fixed random-weight encoder, ``VGGEncoder.random(width=0.25,
seed=0)`` (random features already carry colour and texture statistics: Ustyuzhaninov et al., ICLR
2017; He, Wang & Hopcroft, NeurIPS 2016), so nothing has to be downloaded. Their limits: such an
encoder has no notion of objects, so the content survives only as edges and colour regions; its
feature losses admit images that match the features without looking like the picture (the AdaIN
decoder needed a pixel identity loss, and the outputs keep faint horizontal scan lines); the networks
are narrow (width 0.25) and trained for a few thousand steps on 64-pixel crops. They stylize visibly,
in the styles' palettes, but look nothing like the published models' output: for that, pass the
AdaIN authors' weights (``encoder_weights`` / ``decoder_weights``) or train the configs with a
pretrained encoder.

``python -m normapps.tasks.style.checkpoints RUN.ckpt [RUN.ckpt ...] --out FILE`` turns Lightning
checkpoints of the tasks in :mod:`normapps.tasks.style.lightning` into a stylizer file
(:func:`export_from_lightning`; for wct, one checkpoint per level).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normapps
from normapps.io import atomic_write, check_overwrite, sha256
from normapps.models import TransformerNet, VGGDecoder, VGGEncoder

from .transfer import WCT_LEVELS, AdaINStylizer, WCTStylizer

__all__ = [
    "FLOAT16_TOLERANCE", "FORMAT", "METHODS", "SHIPPED", "Stylizer", "checkpoint_path", "export_from_lightning",
    "load_encoder", "load_stylizer", "save_stylizer",
]

FORMAT = "normapps-stylizer"
VERSION = 1
#: The stylization methods a file can hold.
METHODS = ("adain", "wct", "cin", "fast")
#: The shipped checkpoints, by the name :func:`load_stylizer` takes: file name and how it is made.
SHIPPED: dict[str, tuple[str, str]] = {
    name: (f"style_{name}.pt", f"normapps fit -c configs/style/{name}.yaml, then python -m normapps.tasks.style.checkpoints "
                               f"runs/style/{name}/{name}.ckpt --out checkpoints/style_{name}.pt")
    for name in ("adain", "cin", "fast", "fast_bn")
}
SHIPPED["wct"] = ("style_wct.pt", "normapps fit -c configs/style/wct_reluN_1.yaml for N = 4, 3, 2, 1, then python -m "
                                  "normapps.tasks.style.checkpoints runs/style/wct/relu4_1.ckpt runs/style/wct/relu3_1.ckpt "
                                  "runs/style/wct/relu2_1.ckpt runs/style/wct/relu1_1.ckpt --out checkpoints/style_wct.pt")
#: Largest difference between the outputs of the float16-stored and the float32 stylizer for float16 storage.
FLOAT16_TOLERANCE = 1e-2
_PROBE_SIZE = 128
_MODULE_KEYS = {"adain": ("encoder", "decoder"), "wct": ("encoder", "decoders"), "cin": ("network",), "fast": ("network",)}


def checkpoint_path(name: str) -> Path:
    """Where the shipped checkpoint ``name`` (a key of :data:`SHIPPED`) lives: ``checkpoints/`` of the repository."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped stylizer {name!r}; expected one of {', '.join(SHIPPED)}")
    return Path(normapps.__file__).resolve().parents[1] / "checkpoints" / SHIPPED[name][0]


# ---------------------------------------------------------------------------------------------- encoders


def load_encoder(source: str | Path | Mapping[str, Tensor] = "random", width: float = 0.25, seed: int = 0) -> VGGEncoder:
    """A frozen VGG-19 encoder to relu4_1.

    Args:
        source: ``"random"`` (:meth:`VGGEncoder.random` with ``width`` and ``seed``), ``"torchvision"``
            (torchvision's vgg19 weights from the torch hub cache), or a weights file / state dict: the
            AdaIN authors' ``vgg_normalised.pth`` layout (first conv 1x1) or torchvision's ``vgg19``.
        width: channel multiplier of the random encoder (a file's width is read from its shapes).
        seed: seed of the random encoder.
    """
    if isinstance(source, str) and source == "random":
        return VGGEncoder.random(width=width, seed=seed)
    if isinstance(source, str) and source == "torchvision":
        return VGGEncoder.from_torchvision()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights {path} not found (expected 'random', 'torchvision' or a weights file)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
    else:
        state = source
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict in the encoder weights, got {type(state).__name__}")
    first = next((v for k, v in state.items() if k.endswith("weight") and isinstance(v, Tensor) and v.dim() == 4), None)
    published = first is not None and tuple(first.shape[-2:]) == (1, 1)
    return (VGGEncoder.from_published if published else VGGEncoder.from_torchvision)(state)


# --------------------------------------------------------------------------------------- module configs


def _module_config(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, VGGEncoder):
        return {"type": "VGGEncoder", "width": module.width, "last": module.last, "padding": module.padding,
                "ceil_mode": module.ceil_mode}
    if isinstance(module, VGGDecoder):
        return {"type": "VGGDecoder", "width": module.width, "level": module.level}
    if isinstance(module, TransformerNet):
        return {"type": "TransformerNet", "width": module.width, "norm": module.norm, "num_styles": module.num_styles,
                "residual_blocks": module.residual_blocks, "norm_kwargs": module.norm_kwargs}
    raise TypeError(f"cannot store a {type(module).__name__}: expected a VGGEncoder, VGGDecoder or TransformerNet")


def _build_module(config: Mapping[str, Any]) -> nn.Module:
    kind, args = config["type"], {k: v for k, v in config.items() if k != "type"}
    if kind == "VGGEncoder":
        with torch.device("meta"):  # weights come from the state dict: no initialization
            module = VGGEncoder(**args)
        return module.to_empty(device="cpu")
    if kind == "VGGDecoder":
        return VGGDecoder(**args)
    if kind == "TransformerNet":
        return TransformerNet(**args)
    raise ValueError(f"unknown module type {kind!r} in the stylizer file")


def _check_modules(method: str, modules: Mapping[str, Any]) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    expected = _MODULE_KEYS[method]
    if set(modules) != set(expected):
        raise ValueError(f"method {method!r} stores the modules {', '.join(expected)}; got {', '.join(modules) or 'none'}")
    if method == "wct":
        if not isinstance(modules["decoders"], Mapping) or not modules["decoders"]:
            raise ValueError("wct needs decoders, a dict {level: VGGDecoder} with at least one level")
        for level, decoder in modules["decoders"].items():
            if not isinstance(decoder, VGGDecoder) or decoder.level != level:
                raise ValueError(f"wct decoder {level!r} must be a VGGDecoder of level {level!r}, got {decoder!r}")


# --------------------------------------------------------------------------------------------- stylizer


def _as_batch(image: Tensor, name: str) -> Tensor:
    if not isinstance(image, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB image (3, H, W) or batch (N, 3, H, W) in [0, 1], got shape {tuple(image.shape)}")
    return image


def _check_partition(mask: Tensor, content: Tensor, count: int) -> Tensor:
    """Binary masks ``(K, H, W)`` or ``(1 or N, K, H, W)`` at the content's size, one style per pixel, as floats ``(1 or N, K, H, W)``."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    if mask.dim() != 4 or mask.shape[1] != count or mask.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"mask must be (K, H, W) or (N, K, H, W) with K = {count} (one per style), got shape {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask values must be 0 or 1 (binarize the mask first)")
    if not bool((mask.sum(1) == 1).all()):
        raise ValueError("the masks must assign every pixel to exactly one style")
    return mask.to(content.dtype)


class Stylizer(nn.Module):
    """One interface to the four stylization methods; images ``(N, 3, H, W)`` in [0, 1] in and out.

    * ``adain`` / ``wct``: arbitrary styles from style images (or their :meth:`encode_style` features),
      with ``weights`` (style interpolation), ``alpha`` (content-style trade-off) and ``mask`` (one
      style per region);
    * ``cin``: the trained styles by name (:attr:`styles`), with ``weights`` to interpolate them
      (convex combination of every layer's gamma and beta) and ``mask`` (each region its style);
    * ``fast``: the one style it was trained for; it takes no style argument.

    Colour preservation is the caller's: apply :func:`~normapps.tasks.style.transfer.preserve_color`
    to the style images before :meth:`encode_style`.

    Args:
        method: one of :data:`METHODS`.
        modules: ``{"encoder", "decoder"}`` (adain), ``{"encoder", "decoders": {level: decoder}}``
            (wct, applied in the order of :data:`~normapps.tasks.style.transfer.WCT_LEVELS`),
            ``{"network"}`` (cin, fast: a :class:`~normapps.models.TransformerNet`).
        styles: the style names of a cin network (one per style index) or of a fast network (one).
        config: the file's config, kept for reference (:attr:`config`).
    """

    def __init__(self, method: str, modules: Mapping[str, Any], styles: Sequence[str] = (),
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        _check_modules(method, modules)
        self.method, self.styles = method, list(styles)
        self.config = dict(config or {})
        if method == "adain":
            self.transfer = AdaINStylizer(modules["encoder"], modules["decoder"])
        elif method == "wct":
            levels = [level for level in WCT_LEVELS if level in modules["decoders"]]
            self.transfer = WCTStylizer(modules["encoder"], modules["decoders"], levels)
        else:
            network = modules["network"]
            if not isinstance(network, TransformerNet):
                raise ValueError(f"{method} needs a TransformerNet as network, got {type(network).__name__}")
            if method == "cin" and (network.norm != "cin" or network.num_styles != len(self.styles)):
                raise ValueError(f"a cin stylizer needs a 'cin' network with one style per name; got norm {network.norm!r} "
                                 f"with {network.num_styles} styles and {len(self.styles)} names")
            if method == "fast" and (network.conditional or len(self.styles) != 1):
                raise ValueError(f"a fast stylizer needs an unconditional network and one style name, got norm {network.norm!r} "
                                 f"and styles {self.styles}")
            self.network = network

    def modules_to_save(self) -> dict[str, Any]:
        """The modules as :func:`save_stylizer` takes them."""
        if self.method == "adain":
            return {"encoder": self.transfer.encoder, "decoder": self.transfer.decoder}
        if self.method == "wct":
            return {"encoder": self.transfer.encoder, "decoders": dict(self.transfer.decoders.items())}
        return {"network": self.network}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write this stylizer with :func:`save_stylizer`."""
        return save_stylizer(path, self.method, self.modules_to_save(), {**self.config, "styles": self.styles}, overwrite=overwrite)

    def _accepts(self) -> str:
        if self.method in ("adain", "wct"):
            return f"{self.method} takes style images (styles=) or encode_style features (style_features=), with weights, alpha, mask"
        if self.method == "cin":
            return f"cin takes style_names= among {', '.join(self.styles)} (with weights= to interpolate, or mask=)"
        return f"fast takes no style: it applies its one style {self.styles[0]!r}"

    def encode_style(self, style_images: Sequence[Tensor]) -> Any:
        """Encoder features of each style image, for :meth:`forward`'s ``style_features`` (adain, wct only).

        Encode once and reuse them for a folder of contents.
        """
        if self.method not in ("adain", "wct"):
            raise ValueError(f"encode_style is for adain and wct; {self._accepts()}")
        if isinstance(style_images, Tensor):
            style_images = [style_images]
        if not style_images:
            raise ValueError("expected at least one style image")
        return [self.transfer.encode_style(_as_batch(image, f"style image {k}")) for k, image in enumerate(style_images)]

    def forward(self, content: Tensor, styles: Sequence[Tensor] | None = None, *, style_features: Any = None,
                style_names: Sequence[str] | None = None, weights: Sequence[float] | None = None, alpha: float = 1.0,
                mask: Tensor | None = None) -> Tensor:
        """Stylized ``content`` ``(N, 3, H, W)`` in [0, 1], same size.

        Args:
            content: images ``(N, 3, H, W)`` (or one ``(3, H, W)``) in [0, 1].
            styles: adain / wct: style images, each ``(3, H, W)`` or ``(1 or N, 3, H, W)``.
            style_features: adain / wct: :meth:`encode_style` of the style images instead of ``styles``.
            style_names: cin: names among :attr:`styles`.
            weights: one per style, summing to 1: style interpolation (adain, wct, cin).
            alpha: adain / wct: content-style trade-off in [0, 1] (1: full style).
            mask: one binary mask per style, ``(K, H, W)`` or ``(1 or N, K, H, W)`` at the content's
                size, every pixel in exactly one (adain, wct, cin).

        Raises:
            ValueError: a combination the method does not take (the message says what it accepts),
                an unknown style name, or a malformed argument.
        """
        content = _as_batch(content, "content")
        if mask is not None and weights is not None:
            raise ValueError("give either style weights (interpolation) or a mask (spatial control), not both")
        if mask is not None and tuple(mask.shape[-2:]) != tuple(content.shape[-2:]):
            raise ValueError(f"mask must have the content image's size {tuple(content.shape[-2:])}, got {tuple(mask.shape[-2:])}")
        height, width = content.shape[-2:]
        if self.method in ("adain", "wct"):
            if style_names is not None:
                raise ValueError(f"style_names are for a cin stylizer; {self._accepts()}")
            if (styles is None) == (style_features is None):
                raise ValueError(f"give exactly one of styles and style_features; {self._accepts()}")
            if style_features is None:
                style_features = self.encode_style(styles)
            elif not isinstance(style_features, list):
                style_features = [style_features]
            single = len(style_features) == 1 and weights is None
            out = self.transfer(content, style_features=style_features[0] if single else style_features,
                                weights=weights, alpha=alpha, mask=mask)
            return out[..., :height, :width]
        if styles is not None or style_features is not None:
            raise ValueError(f"style images are for adain and wct; {self._accepts()}")
        if alpha != 1.0:
            raise ValueError(f"alpha (the feature-space content-style trade-off) is for adain and wct; {self._accepts()}")
        if self.method == "fast":
            if style_names is not None and list(style_names) != self.styles or weights is not None or mask is not None:
                raise ValueError(f"fast has one style and takes no style_names, weights or mask; {self._accepts()}")
            return self.network(content)
        return self._cin(content, style_names, weights, mask)

    def _cin(self, content: Tensor, style_names: Sequence[str] | None, weights: Sequence[float] | None,
             mask: Tensor | None) -> Tensor:
        if not style_names or isinstance(style_names, str):
            raise ValueError(f"give style_names, a list of names; {self._accepts()}")
        unknown = [name for name in style_names if name not in self.styles]
        if unknown:
            raise ValueError(f"unknown style {', '.join(map(repr, unknown))}: this cin stylizer knows {', '.join(self.styles)}")
        indices = [self.styles.index(name) for name in style_names]
        if mask is not None:
            masks = _check_partition(mask, content, len(indices))
            return sum(masks[:, k : k + 1] * self.network(content, index) for k, index in enumerate(indices))
        if weights is None:
            if len(indices) == 1:
                return self.network(content, indices[0])
            weights = [1.0 / len(indices)] * len(indices)
        if len(weights) != len(indices):
            raise ValueError(f"expected {len(indices)} weights (one per style name), got {len(weights)}")
        mix = torch.zeros(len(self.styles), dtype=content.dtype, device=content.device)
        for index, w in zip(indices, weights):
            mix[index] += float(w)
        return self.network(content, mix)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, styles={self.styles}"


# ----------------------------------------------------------------------------------------- save / load


def _state_dicts(method: str, modules: Mapping[str, Any]) -> dict[str, Any]:
    def state(module: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    if method == "wct":
        return {"encoder": state(modules["encoder"]), "decoders": {lvl: state(m) for lvl, m in modules["decoders"].items()}}
    return {name: state(module) for name, module in modules.items()}


def _map_tensors(tree: Any, fn) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    return tree


def _half(t: Tensor) -> Tensor:
    return t.half() if t.is_floating_point() else t


def _single(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() else t


def _rebuild(method: str, config: Mapping[str, Any], state_dicts: Mapping[str, Any], styles: Sequence[str]) -> Stylizer:
    specs = config["modules"]
    modules: dict[str, Any] = {}
    for name, spec in specs.items():
        if name == "decoders":
            modules[name] = {}
            for level, sub in spec.items():
                decoder = _build_module(sub)
                decoder.load_state_dict(_map_tensors(state_dicts[name][level], _single))
                modules[name][level] = decoder
        else:
            module = _build_module(spec)
            module.load_state_dict(_map_tensors(state_dicts[name], _single))
            modules[name] = module
    stylizer = Stylizer(method, modules, styles, config)
    stylizer.eval().requires_grad_(False)
    return stylizer


def _probe(stylizer: Stylizer) -> Tensor:
    """Outputs on fixed synthetic images (smooth colour fields with fine noise), for the float16 check."""
    generator = torch.Generator().manual_seed(0)

    def image(n: int) -> Tensor:
        coarse = torch.rand(n, 3, 8, 8, generator=generator)
        fine = torch.rand(n, 3, _PROBE_SIZE, _PROBE_SIZE, generator=generator)
        return (0.8 * F.interpolate(coarse, size=(_PROBE_SIZE,) * 2, mode="bilinear", align_corners=False) + 0.2 * fine)

    content, style = image(2), image(1)
    with torch.no_grad():
        if stylizer.method in ("adain", "wct"):
            return stylizer(content, [style])
        if stylizer.method == "cin":
            return torch.cat([stylizer(content, style_names=[name]) for name in stylizer.styles])
        return stylizer(content)


def save_stylizer(path: str | Path, method: str, modules: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                  overwrite: bool = False, precision: str = "auto") -> Path:
    """Write a stylizer file (the format of this module's docstring) atomically; return its path.

    Args:
        path: the file to write (its folder is created).
        method: one of :data:`METHODS`.
        modules: ``{"encoder": VGGEncoder, "decoder": VGGDecoder}`` (adain),
            ``{"encoder": VGGEncoder, "decoders": {level: VGGDecoder}}`` (wct),
            ``{"network": TransformerNet}`` (cin, fast).
        config: stored with the file; ``"styles"`` (the style names, required for cin and fast) and any
            information about the training (data, steps). The modules' constructor arguments are
            added under ``"modules"``.
        overwrite: replace an existing file (refused otherwise).
        precision: ``"auto"`` (float16 if the outputs on a fixed probe stay within
            :data:`FLOAT16_TOLERANCE` of float32, else float32), ``"float16"`` or ``"float32"``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false (nothing is written).
        ValueError: modules that do not fit the method, or cin / fast without style names.
    """
    path = Path(path)
    check_overwrite(path, overwrite)
    if precision not in ("auto", "float16", "float32"):
        raise ValueError(f"precision must be 'auto', 'float16' or 'float32', got {precision!r}")
    _check_modules(method, modules)
    config = copy.deepcopy(dict(config or {}))
    styles = list(config.pop("styles", None) or [])
    if method in ("cin", "fast") and not styles:
        raise ValueError(f"a {method} stylizer needs config['styles'], the names of its trained styles")
    if method in ("adain", "wct") and styles:
        raise ValueError(f"{method} takes any style image; config['styles'] is only for cin and fast")
    if method == "wct":
        specs = {"encoder": _module_config(modules["encoder"]),
                 "decoders": {level: _module_config(decoder) for level, decoder in modules["decoders"].items()}}
    else:
        specs = {name: _module_config(module) for name, module in modules.items()}
    config["modules"] = specs
    state32 = _state_dicts(method, modules)
    reference = _probe(_rebuild(method, config, state32, styles))
    error = float((_probe(_rebuild(method, config, _map_tensors(state32, _half), styles)) - reference).abs().max())
    use_half = precision == "float16" or (precision == "auto" and error <= FLOAT16_TOLERANCE)
    payload = {
        "format": FORMAT, "version": VERSION, "method": method, "config": config,
        "state_dicts": _map_tensors(state32, _half) if use_half else state32, "styles": styles,
        "precision": "float16" if use_half else "float32", "float16_max_error": error,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue(), overwrite=overwrite)
    return path


def _read_file(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise ValueError(f"{path} is not a readable stylizer file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a normapps stylizer file (expected format {FORMAT!r}; a Lightning checkpoint "
                         "becomes one with python -m normapps.tasks.style.checkpoints CKPT --out FILE)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has stylizer format version {payload.get('version')!r}; this normapps reads version {VERSION}")
    return payload


def load_stylizer(method: str, checkpoint: str | Path | None = None, *, encoder_weights: str | Path | None = None,
                  decoder_weights: str | Path | None = None) -> Stylizer:
    """A :class:`Stylizer` in eval mode, from a stylizer file or (adain) published weights.

    Args:
        method: ``"adain"``, ``"wct"``, ``"cin"`` or ``"fast"``; without ``checkpoint`` also ``"fast_bn"``
            (the shipped fast network with batch norm, method ``"fast"``).
        checkpoint: a stylizer file; None: the shipped ``checkpoints/style_<method>.pt`` of the repository.
        encoder_weights: adain only, with ``decoder_weights``: the AdaIN authors' ``vgg_normalised.pth``
            or torchvision's ``vgg19`` weights (:func:`load_encoder`).
        decoder_weights: adain only, with ``encoder_weights``: the authors' ``decoder.pth``
            (:meth:`VGGDecoder.from_published`) or a decoder state dict of ours. A decoder only works
            with the encoder it was trained for, so the two come together.

    Raises:
        FileNotFoundError: a missing file (for a shipped one, with the command that trains it).
        ValueError: an unknown method, a file of another method or format, weights given for another method.
    """
    names = (*METHODS, "fast_bn") if checkpoint is None else METHODS
    if method not in names:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(names)}")
    if encoder_weights is not None or decoder_weights is not None:
        if method != "adain":
            raise ValueError(f"encoder_weights / decoder_weights are for method 'adain' (published AdaIN weights), not {method!r}")
        if checkpoint is not None:
            raise ValueError("give either a checkpoint or encoder_weights and decoder_weights, not both")
        if encoder_weights is None or decoder_weights is None:
            raise ValueError("give both encoder_weights and decoder_weights: a decoder only inverts the encoder it was "
                             "trained with (e.g. the AdaIN authors' vgg_normalised.pth with their decoder.pth)")
        for what, file in (("encoder", encoder_weights), ("decoder", decoder_weights)):
            if not Path(file).is_file():
                raise FileNotFoundError(f"{what} weights {file} not found")
        modules = {"encoder": load_encoder(encoder_weights), "decoder": VGGDecoder.from_published(decoder_weights)}
        config = {"source": {"encoder": str(encoder_weights), "decoder": str(decoder_weights)}}
        return Stylizer("adain", modules, config=config).eval().requires_grad_(False)
    if checkpoint is None:
        path = checkpoint_path(method)
        if not path.is_file():
            raise FileNotFoundError(f"the shipped {method} stylizer {path} is missing; train it with: {SHIPPED[method][1]}")
        method = "fast" if method == "fast_bn" else method
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"stylizer file {path} not found")
    payload = _read_file(path)
    if payload["method"] != method:
        raise ValueError(f"{path} holds a {payload['method']!r} stylizer, not {method!r}")
    return _rebuild(method, payload["config"], payload["state_dicts"], payload.get("styles", []))


# ------------------------------------------------------------------------------------ from Lightning


def export_from_lightning(ckpt_paths: str | Path | Sequence[str | Path], out_path: str | Path, overwrite: bool = False,
                          precision: str = "auto") -> Path:
    """Turn Lightning checkpoints of the tasks in :mod:`normapps.tasks.style.lightning` into a stylizer file.

    One checkpoint for AdaINTask, FastStyleTask and CINTask; for WCT, one WCTDecoderTask checkpoint per
    level (all trained with the same encoder), whose decoders go into one file. The config records the
    task, its hyper-parameters and the number of training steps of each checkpoint.
    """
    paths = [Path(ckpt_paths)] if isinstance(ckpt_paths, (str, Path)) else [Path(p) for p in ckpt_paths]
    if not paths:
        raise ValueError("expected at least one Lightning checkpoint")
    parts = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Lightning checkpoint {path} not found")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        class_path = checkpoint.get("normapps_style_task")
        if class_path is None:
            raise ValueError(f"{path} is not a checkpoint of a normapps.tasks.style.lightning task")
        module_name, _, class_name = class_path.rpartition(".")
        task_class = getattr(importlib.import_module(module_name), class_name)
        task = task_class.load_from_checkpoint(path, map_location="cpu")
        method, modules, config = task.stylizer_parts()
        config["training"] = {"task": class_name, "checkpoint": path.name, "steps": int(checkpoint.get("global_step", 0)),
                              "hyper_parameters": {k: v for k, v in dict(task.hparams).items() if not k.startswith("_")}}
        parts.append((method, modules, config))
    methods = {method for method, _, _ in parts}
    if len(methods) > 1:
        raise ValueError(f"the checkpoints hold different methods ({', '.join(sorted(methods))}); export them one by one")
    method = methods.pop()
    if method != "wct":
        if len(parts) > 1:
            raise ValueError(f"a {method} stylizer comes from one checkpoint, got {len(parts)}")
        return save_stylizer(out_path, method, parts[0][1], parts[0][2], overwrite=overwrite, precision=precision)
    encoder = parts[0][1]["encoder"]
    reference = encoder.state_dict()
    decoders: dict[str, VGGDecoder] = {}
    for path, (_, modules, _) in zip(paths, parts):
        other = modules["encoder"].state_dict()
        if reference.keys() != other.keys() or any(not torch.equal(reference[k], other[k]) for k in reference):
            raise ValueError(f"{path} was trained with another encoder than {paths[0]}; WCT decoders must share one")
        for level, decoder in modules["decoders"].items():
            if level in decoders:
                raise ValueError(f"two checkpoints hold a decoder for {level}")
            decoders[level] = decoder
    config = {"training": {level: cfg["training"] for (_, m, cfg) in parts for level in m["decoders"]}}
    return save_stylizer(out_path, "wct", {"encoder": encoder, "decoders": decoders}, config, overwrite=overwrite,
                         precision=precision)



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m normapps.tasks.style.checkpoints CKPT [CKPT ...] --out FILE [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m normapps.tasks.style.checkpoints",
                                     description="Turn Lightning checkpoints of a style task into a stylizer file.")
    parser.add_argument("checkpoints", nargs="+", help="Lightning .ckpt files (wct: one per level)")
    parser.add_argument("--out", required=True, help="the stylizer file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--precision", choices=("auto", "float16", "float32"), default="auto")
    args = parser.parse_args(argv)
    try:
        out = export_from_lightning(args.checkpoints, args.out, overwrite=args.overwrite, precision=args.precision)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    payload = torch.load(out, map_location="cpu", weights_only=True)
    print(f"{out}: {payload['method']}, {payload['precision']} (float16 max error {payload['float16_max_error']:.2e}), "
          f"{out.stat().st_size / 1e6:.2f} MB, sha256 {sha256(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
