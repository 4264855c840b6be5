"""The scene parser reads rendered scenes back exactly and judges captions: ok, leaked, misshaped or neglected."""

import torch

from mikit.xattn.parser import compare, parse_scene, regions
from mikit.xattn.scenes import SceneObject, make_scenes, render


def signature(objects):
    return sorted((o.colour, o.shape, o.size) for o in objects)


def test_parser_recovers_every_object_of_rendered_scenes_even_with_noise():
    generator = torch.Generator().manual_seed(0)
    for scene in make_scenes(200, seed=5):
        found = parse_scene(scene.image)
        assert signature(found) == signature(scene.objects), scene.caption
        for obj in scene.objects:
            match = next(f for f in found if (f.colour, f.shape) == (obj.colour, obj.shape))
            assert torch.equal(match.mask, scene.masks[scene.objects.index(obj)])
        noisy = (scene.image + 0.05 * torch.randn(scene.image.shape, generator=generator)).clamp(0, 1)
        assert signature(parse_scene(noisy)) == signature(scene.objects), scene.caption


def test_regions_are_four_connected_components():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[2:4, 2:4] = True
    mask[4, 4] = True  # touches the block only diagonally: its own region
    mask[10:12, 20:30] = True
    sizes = sorted(int(r.sum()) for r in regions(mask))
    assert sizes == [1, 4, 20]


def test_compare_tells_ok_from_leaked_misshaped_and_neglected():
    red_circle = SceneObject("circle", "red", "large", 8, 8)
    blue_square = SceneObject("square", "blue", "large", 24, 24)
    image, _ = render([red_circle, blue_square])
    assert compare([red_circle, blue_square], parse_scene(image)) == ["ok", "ok"]
    swapped, _ = render([SceneObject("circle", "blue", "large", 8, 8), SceneObject("square", "red", "large", 24, 24)])
    assert compare([red_circle, blue_square], parse_scene(swapped)) == ["leaked", "leaked"]
    only_circle, _ = render([red_circle])
    assert compare([red_circle, blue_square], parse_scene(only_circle)) == ["ok", "neglected"]
    green_square, _ = render([red_circle, SceneObject("square", "green", "large", 24, 24)])
    assert compare([red_circle, blue_square], parse_scene(green_square)) == ["ok", "neglected"]  # green is not in the caption
    blue_triangle, _ = render([red_circle, SceneObject("triangle", "blue", "large", 24, 24)])
    assert compare([red_circle, blue_square], parse_scene(blue_triangle)) == ["ok", "misshaped"]
