"""Procedural "<colour> <shape>" images: 100 named classes that need no download.

Classes compose two attributes, so text embeddings of their names carry meaning and the
held-out classes (zero-shot) share words with seen ones. Images are rendered with torch
from an explicit generator, so a seed fixes every pixel.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import torch

IMAGE_SIZE = 16  # images are (3, IMAGE_SIZE, IMAGE_SIZE), values roughly in [-0.5, 0.5]
SUPERSAMPLE = 3  # shapes are rasterised on a 3x finer grid and average-pooled (anti-aliasing)

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.90, 0.90),
    "pink": (1.00, 0.55, 0.75),
    "white": (0.97, 0.97, 0.97),
    "brown": (0.50, 0.28, 0.10),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "diamond",
    "ring",
    "crescent",
    "hexagon",
)
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)


def heldout_classes(seed: int, per_attribute: int = 2) -> list[str]:
    """Pick held-out classes so every colour and every shape still occurs among seen classes.

    Each of `per_attribute` rounds takes one cell per colour along a shifted permutation of
    the shapes, so every colour and every shape is held out exactly `per_attribute` times
    and stays seen in the other classes (needs per_attribute < 10).
    """
    rng = random.Random(f"probex-zoo-heldout-{seed}")
    colours, n = list(COLOURS), len(SHAPES)
    perm = list(range(n))
    rng.shuffle(perm)
    shifts = rng.sample(range(n), per_attribute)
    cells = {(ci, perm[(ci + s) % n]) for s in shifts for ci in range(len(colours))}
    return sorted(f"{colours[c]} {SHAPES[s]}" for c, s in cells)


def _shape_mask(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of shape number `shape` at coordinates u, v (y points down)."""
    hu, hv = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    name = SHAPES[shape]
    if name == "circle":
        m = r < 0.8
    elif name == "square":
        m = torch.maximum(hu, hv) < 0.68
    elif name == "triangle":  # apex up
        m = (v < 0.6) & (hu < (v + 0.85) * 0.55)
    elif name == "star":
        theta = torch.atan2(v, u)
        m = r < 0.45 + 0.4 * torch.cos(5 * (theta + math.pi / 2)).clamp(min=0) ** 2
    elif name == "cross":
        m = ((hu < 0.22) & (hv < 0.85)) | ((hv < 0.22) & (hu < 0.85))
    elif name == "heart":
        x, y = 1.25 * u, -1.25 * v + 0.35
        m = (x * x + y * y - 1) ** 3 - x * x * y**3 < 0
    elif name == "diamond":
        m = hu + hv < 0.85
    elif name == "ring":
        m = (r < 0.85) & (r > 0.5)
    elif name == "crescent":
        m = (r < 0.8) & ((u - 0.38) ** 2 + (v + 0.1) ** 2 > 0.62**2)
    else:  # hexagon, flat sides left and right
        m = torch.maximum(hv * 0.866 + hu * 0.5, hu) < 0.75
    return m.float()


@dataclass(frozen=True)
class ImageJitter:
    """How much each rendered image varies around its class prototype."""

    scale: tuple[float, float] = (0.55, 0.8)  # object half-size as a fraction of the image
    shift: float = 0.6  # max centre offset as a fraction of the free margin (1 - scale)
    colour: float = 0.08  # max per-channel colour jitter (uniform)
    background: tuple[float, float] = (0.0, 0.35)  # range of the background grey level
    noise: float = 0.06  # std of per-pixel gaussian noise
    # amplitude of each class's own surface pattern (0: flat colour, the zoo v1 images)
    texture: float = 0.0


TEXTURE_SEED = 20261129  # class patterns are fixed for every zoo and seed (part of the data)


@functools.cache
def _class_textures() -> torch.Tensor:
    """Per class two oriented gratings in object coordinates: (n_classes, 2, 4) rows of
    (frequency, cos θ, sin θ, phase). A fixed generator, so a class looks the same in every
    zoo: its pattern is part of what "red star" is, the way a CIFAR class has its own look.
    Drawn once per process (every render call asks); callers index it, never write to it."""
    g = torch.Generator().manual_seed(TEXTURE_SEED)
    n = len(CLASSES)
    freq = torch.empty(n, 2).uniform_(2.0, 5.0, generator=g)
    theta = torch.rand(n, 2, generator=g) * math.pi
    phase = torch.rand(n, 2, generator=g) * 2 * math.pi
    return torch.stack([freq, theta.cos(), theta.sin(), phase], dim=-1)


def _texture(labels: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each image's class pattern at object coordinates u, v (N, g, g), values in [-1, 1]."""
    t = _class_textures()[labels]  # (N, 2, 4)
    f, c, s, ph = (t[..., i, None, None] for i in range(4))  # (N, 2, 1, 1) each
    arg = math.pi * f * (c * u[:, None] + s * v[:, None]) + ph
    return torch.sin(arg).mean(1)  # (N, g, g)


def render(
    labels: torch.Tensor, gen: torch.Generator, jitter: ImageJitter = ImageJitter()
) -> torch.Tensor:
    """Render one image per class index in `labels` -> (N, 3, IMAGE_SIZE, IMAGE_SIZE).

    Random position, scale, small rotation, colour and background per image; centred
    around 0 (pixel - 0.5) so networks need no input normalisation.
    """
    n = labels.shape[0]
    g = IMAGE_SIZE * SUPERSAMPLE
    grid = (torch.arange(g, dtype=torch.float32) + 0.5) / g * 2 - 1  # (g,) in [-1, 1]
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    scale = torch.empty(n).uniform_(*jitter.scale, generator=gen)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - scale) * jitter.shift
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - scale) * jitter.shift
    angle = (torch.rand(n, generator=gen) * 2 - 1) * 0.35
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dx = (gx[None] - cx[:, None, None]) / scale[:, None, None]
    dy = (gy[None] - cy[:, None, None]) / scale[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # (N, g, g)
    shape_idx, colour_idx = labels % len(SHAPES), labels // len(SHAPES)
    mask = torch.zeros(n, g, g)
    for shape in range(len(SHAPES)):
        sel = (shape_idx == shape).nonzero().squeeze(1)
        if sel.numel():
            mask[sel] = _shape_mask(shape, u[sel], v[sel])
    shade = torch.ones(n, 1, g, g)
    if jitter.texture:
        shade = (1 + jitter.texture * _texture(labels, u, v))[:, None]  # (N, 1, g, g)
    # pool mask and mask·shade, so the pattern is anti-aliased with the outline
    mask, shaded = torch.nn.functional.avg_pool2d(
        torch.stack([mask, mask * shade[:, 0]], 1), SUPERSAMPLE
    ).unbind(1)  # (N, H, W) each
    mask, shaded = mask[:, None], shaded[:, None]
    palette = torch.tensor(list(COLOURS.values()))
    colour = palette[colour_idx] + (torch.rand(n, 3, generator=gen) * 2 - 1) * jitter.colour
    bg = torch.empty(n, 1, 1, 1).uniform_(*jitter.background, generator=gen)
    img = bg * (1 - mask) + shaded * colour[:, :, None, None].clamp(0, 1)
    img = img + torch.randn(img.shape, generator=gen) * jitter.noise
    return (img.clamp(0, 1) - 0.5).contiguous()


def image_pool(
    per_class: int, gen: torch.Generator, jitter: ImageJitter = ImageJitter()
) -> torch.Tensor:
    """A pool of `per_class` images for every class -> (n_classes, per_class, 3, H, W)."""
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    chunks = [render(chunk, gen, jitter) for chunk in labels.split(2000)]
    return torch.cat(chunks).view(len(CLASSES), per_class, 3, IMAGE_SIZE, IMAGE_SIZE)
