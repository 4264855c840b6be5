"""Read a (generated) scene back: which coloured shapes it shows, and how it compares with its caption.

    found = parse_scene(image)                       # [ParsedObject(colour, shape, size, cx, cy, mask), ...]
    verdict = compare(scene.objects, found)          # per caption object: "ok", "neglected" or "leaked"

Each pixel takes the nearest palette colour, plain or shaded (or none, if nothing is close); each
4-connected region of one colour with enough pixels is an object. Its shape comes from two numbers:
how much of its bounding box it fills (a square fills all of it) and how much of it lies in the top
half (an upright triangle puts about a quarter there, a circle or square half). On rendered scenes this recovers every object
exactly (tested); on generated images it is the kit's judge of what the generator drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mikit.xattn.scenes import BACKGROUND, COLOURS, SHADE, SceneObject

NAMES = ["background", *COLOURS]
PALETTE = torch.tensor([BACKGROUND, *COLOURS.values()])  # (1 + n_colours, 3)
SHADED = torch.cat([PALETTE, SHADE * PALETTE[1:]])  # and each colour's shade, as textures draw it


@dataclass(frozen=True)
class ParsedObject:
    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    mask: Tensor  # (32, 32) bool


def colour_map(image: Float[Tensor, "3 h w"], max_distance: float = 0.35) -> Tensor:
    """Per pixel, the index into NAMES of the nearest palette colour or its shade, or -1 if none is within
    max_distance."""
    distances = (image.permute(1, 2, 0)[:, :, None, :] - SHADED).norm(dim=-1)  # (h, w, palette and shades)
    nearest = distances.argmin(-1)
    nearest[nearest >= len(NAMES)] -= len(NAMES) - 1  # a shade is its colour
    nearest[distances.min(-1).values > max_distance] = -1
    return nearest


def regions(mask: Tensor) -> list[Tensor]:
    """The 4-connected components of a boolean mask, each as a boolean mask."""
    todo = mask.clone()
    found = []
    height, width = mask.shape
    for start in todo.nonzero().tolist():
        if not todo[start[0], start[1]]:
            continue
        component = torch.zeros_like(mask)
        stack = [start]
        todo[start[0], start[1]] = False
        while stack:
            y, x = stack.pop()
            component[y, x] = True
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and todo[ny, nx]:
                    todo[ny, nx] = False
                    stack.append([ny, nx])
        found.append(component)
    return found


def classify_shape(mask: Tensor) -> str:
    """circle, square or triangle, from how the region fills its bounding box."""
    ys, xs = mask.nonzero(as_tuple=True)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[top : bottom + 1, left : right + 1].float()
    fill = box.mean().item()
    rows = box.shape[0]
    top_share = (box[: rows // 2].sum() / box.sum()).item()
    if top_share < 0.38:
        return "triangle"
    return "square" if fill > 0.82 else "circle"


def parse_scene(image: Float[Tensor, "3 32 32"], min_pixels: int = 12) -> list[ParsedObject]:
    """The objects an image shows: one per connected region of a palette colour with ≥ min_pixels pixels."""
    if image.shape != (3, 32, 32):
        raise ValueError(f"image must be (3, 32, 32) RGB in [0, 1], not shape {tuple(image.shape)}.")
    labels = colour_map(image.float().cpu())
    objects = []
    for index, name in enumerate(NAMES[1:], start=1):
        for region in regions(labels == index):
            area = int(region.sum())
            if area < min_pixels:
                continue
            ys, xs = region.nonzero(as_tuple=True)
            objects.append(ParsedObject(name, classify_shape(region), "large" if area > 80 else "small",
                                        xs.float().mean().item(), ys.float().mean().item(), region))
    return objects


VERDICTS = ("ok", "leaked", "misshaped", "neglected")


def compare(wanted: list[SceneObject], found: list[ParsedObject]) -> list[str]:
    """Per caption object, the first of these that holds: "ok" (a region has its colour and shape),
    "leaked" (its shape is drawn in another caption object's colour: a binding error), "misshaped" (its
    colour is drawn, but not in its shape) or "neglected" (nothing in its colour: the object is missing)."""
    drawn = {(o.colour, o.shape) for o in found}
    drawn_colours = {o.colour for o in found}
    caption_colours = {o.colour for o in wanted}
    verdicts = []
    for obj in wanted:
        if (obj.colour, obj.shape) in drawn:
            verdicts.append("ok")
        elif any(shape == obj.shape and colour in caption_colours - {obj.colour} for colour, shape in drawn):
            verdicts.append("leaked")
        elif obj.colour in drawn_colours:
            verdicts.append("misshaped")
        else:
            verdicts.append("neglected")
    return verdicts
