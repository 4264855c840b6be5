"""The synthetic scene generator: masks are exactly the drawn pixels, captions point at the right objects."""

import pytest
import torch

from mikit.xattn.scenes import BACKGROUND, COLOURS, RADII, SHADE, VOCAB, SceneObject, make_scenes, relation, tokenize


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(300, seed=0)


def test_masks_are_exactly_the_pixels_drawn_in_each_objects_colour_or_its_shade(scenes):
    for scene in scenes:
        drawn = torch.zeros(32, 32, dtype=torch.bool)
        for mask in scene.masks:
            assert mask.any() and not (drawn & mask).any()
            drawn |= mask
        for colour in {o.colour for o in scene.objects}:
            plain = torch.tensor(COLOURS[colour])[:, None, None]
            painted = (scene.image == plain).all(0) | (scene.image == SHADE * plain).all(0)
            same = [m for o, m in zip(scene.objects, scene.masks) if o.colour == colour]
            assert torch.equal(painted, torch.stack(same).any(0)), scene.caption
        assert (scene.image[:, ~drawn] == torch.tensor(BACKGROUND)[:, None]).all()


def test_captions_name_every_object_and_words_point_at_them(scenes):
    for scene in scenes:
        assert len(scene.masks) == len(scene.objects) in (1, 2, 3)
        for i, obj in enumerate(scene.objects):
            named = [w for w, owner in zip(scene.words, scene.word_object) if owner == i]
            assert named == [obj.size, obj.colour, obj.shape]
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
    counts = torch.bincount(torch.tensor([len(s.objects) for s in scenes]))[1:]
    assert counts.min() > 70  # each object count about equally often


def test_two_object_captions_state_the_relation_of_the_centres():
    left, right = SceneObject("circle", "red", "small", 5, 16), SceneObject("square", "blue", "large", 24, 14)
    assert relation(left, right) == "left of" and relation(right, left) == "right of"
    top, bottom = SceneObject("circle", "red", "small", 16, 4), SceneObject("square", "blue", "small", 15, 25)
    assert relation(top, bottom) == "above" and relation(bottom, top) == "below"
    scene = next(s for s in make_scenes(50, seed=1) if len(s.objects) == 2)
    assert relation(*scene.objects) in scene.caption


def test_shapes_have_the_expected_areas():
    for size, r in RADII.items():
        square = SceneObject("square", "red", size, 16, 16).mask().sum()
        circle = SceneObject("circle", "red", size, 16, 16).mask().sum()
        triangle = SceneObject("triangle", "red", size, 16, 16).mask().sum()
        assert square == (2 * r - 1) ** 2
        assert triangle < circle < (2 * r + 1) ** 2 and triangle > 0


def test_scenes_are_reproducible_from_the_seed():
    a, b, c = make_scenes(20, seed=3), make_scenes(20, seed=3), make_scenes(20, seed=4)
    assert [s.caption for s in a] == [s.caption for s in b] != [s.caption for s in c]
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))


def test_tokenize_pads_and_rejects_unknown_words(scenes):
    ids = tokenize(scenes[0].words)
    assert ids.shape == (16,) and ids[0] == VOCAB.index("<bos>")
    assert [VOCAB[i] for i in ids[1 : len(scenes[0].words) + 1]] == scenes[0].words
    with pytest.raises(ValueError, match="not in the scene vocabulary"):
        tokenize(["a", "pink", "circle"])
    with pytest.raises(ValueError, match="max_objects must be 1, 2 or 3"):
        make_scenes(1, max_objects=4)


def test_every_object_shows_both_tones_of_its_shapes_own_texture(scenes):
    for scene in scenes:
        for obj, mask in zip(scene.objects, scene.masks):
            shaded = torch.from_numpy(obj.shaded()) & mask
            assert shaded.any() and (mask & ~shaded).any(), scene.caption
    # The same box drawn as each shape: the dark pixels form different patterns.
    patterns = [SceneObject(shape, "red", "large", 16, 16).shaded() for shape in ("circle", "square", "triangle")]
    assert not (patterns[0] == patterns[1]).all() and not (patterns[1] == patterns[2]).all()
