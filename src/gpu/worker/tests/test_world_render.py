"""The proving ground's images, captions and evaluator: renders are exact and deterministic, every shape is its own
mask in every style, captions paraphrase, held-out prompt phrasings never leak into training captions, and the
evaluator trains, round-trips through its files and refuses folders that are not its own."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from autolora_worker.errors import ModelLoadError
from autolora_worker.models import to_uint8
from autolora_worker.world.evaluator import Evaluator, evaluate_accuracy, load_evaluator, save_evaluator, \
    train_evaluator
from autolora_worker.world.render import BASE_SHAPES, COLOURS, SHAPE_WORDS, SHAPES, STYLE_POST, STYLE_PRE, \
    STYLE_TAG, STYLES, Scene, captions, prompt_for, random_scene, render, render_batch, to_tensor

# The fixed words of the held-out prompt templates; no training caption may contain any of them.
HELD_OUT_MARKERS = ("picture showing", "rendered", "illustration depicting", "draw me", "style:")


def centred(shape: str, style: str, colour: str = "red", rotation: float = 0.1) -> Scene:
    return Scene(shape, style, colour, size=0.7, cx=0.5, cy=0.5, rotation=rotation, background=(128, 128, 128),
                 seed=7)


def test_vocabulary_is_the_issues():
    assert len(SHAPES) == 12 and len(set(SHAPES)) == 12
    assert STYLES == ("flat", "striped", "dotted", "checkered", "outlined", "gradient", "grainy", "pixelated", "neon",
                      "wavy")
    assert list(COLOURS) == ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    assert set(BASE_SHAPES) <= set(SHAPES)


def test_scene_rejects_unknown_attributes():
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        Scene("blob", "flat", "red", 0.5, 0.5, 0.5, 0.0, (128, 128, 128), 0)


def test_render_is_deterministic_and_random_scenes_stay_in_frame():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(200)]
    assert random_scene(np.random.default_rng(0)) == scenes[0]
    first, second = render_batch(scenes[:32]), render_batch(scenes[:32])
    assert first.dtype == np.uint8 and first.shape == (32, 64, 64, 3)
    assert np.array_equal(first, second)
    for scene in scenes:
        assert scene.size / 2 <= scene.cx <= 1 - scene.size / 2 and scene.size / 2 <= scene.cy <= 1 - scene.size / 2
        assert max(scene.background) - min(scene.background) < 40  # grey, never a named hue


def test_every_combination_renders_and_shapes_are_distinct_masks():
    masks = {}
    for shape, style in itertools.product(SHAPES, STYLES):
        image = render(centred(shape, style)).astype(int)
        assert image.shape == (64, 64, 3)
        changed = np.abs(image - 128).sum(-1) > 30 if style != "neon" else image.sum(-1) > 200
        assert 150 < changed.sum() < 64 * 64 - 150, (shape, style)  # something was drawn, and not everything
        if style == "flat":
            masks[shape] = changed
    for a, b in itertools.combinations(SHAPES, 2):
        # A hexagon is the nearest to a circle (IoU 0.93 at this size); its corners still set it apart.
        overlap = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert overlap < 0.95, f"{a} and {b} masks overlap with IoU {overlap:.2f}"


def test_styles_differ_and_colour_survives():
    images = {style: render(centred("hexagon", style, "blue")).astype(float) for style in STYLES}
    for a, b in itertools.combinations(STYLES, 2):
        assert np.abs(images[a] - images[b]).mean() > 3, (a, b)
    for style, image in images.items():
        bluish = (image[..., 2] - np.maximum(image[..., 0], image[..., 1])) > 60
        assert bluish.sum() > 50, style  # the named colour is visibly present in every style


def test_to_tensor_inverts_to_uint8():
    images = render_batch([random_scene(np.random.default_rng(seed)) for seed in range(4)])
    tensor = to_tensor(images)
    assert tensor.shape == (4, 3, 64, 64) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(to_uint8(tensor), images)


def test_captions_have_three_lengths_paraphrase_and_name_the_attributes():
    rng = np.random.default_rng(1)
    scene = centred("hexagon", "striped", "green")
    seen = {length: set() for length in ("text", "text_short", "text_medium")}
    named = {"colour": 0, "shape": 0}
    for _ in range(200):
        result = captions(scene, rng)
        assert set(result) == set(seen)
        for length, caption in result.items():
            seen[length].add(caption)
            named["colour"] += "green" in caption
            has_shape = any(word in caption for word in SHAPE_WORDS["hexagon"])
            named["shape"] += has_shape
            assert has_shape or "object" in caption, caption
            assert any(word in caption for word in (*STYLE_PRE["striped"], *STYLE_POST["striped"],
                                                    *STYLE_TAG["striped"], "in striped style")), caption
    # Most captions name the colour and the shape; some leave them out, as prompts do ("a hexagon").
    assert 0.65 < named["colour"] / 600 < 0.85 and 0.8 < named["shape"] / 600 < 0.95, named
    assert all(len(variants) >= 4 for variants in seen.values()), {k: len(v) for k, v in seen.items()}
    assert any("six-sided" in caption for variants in seen.values() for caption in variants)
    for _ in range(40):
        for caption in captions(scene, rng, leave_out=False).values():
            assert "green" in caption and any(word in caption for word in SHAPE_WORDS["hexagon"]), caption


def _names(shape: str | None = None, style: str | None = None) -> tuple[str, ...]:
    words = () if shape is None else SHAPE_WORDS[shape]
    return words if style is None else (*words, style, *STYLE_PRE[style], *STYLE_POST[style], *STYLE_TAG[style])


def test_captions_never_name_an_unnamed_concept_but_still_mark_it():
    """The base that draws every concept hears only the base ones named: a pool concept gets the same generic
    words whatever it is, and a caption naming no style still means the flat one."""
    rng = np.random.default_rng(4)
    pool_concepts = frozenset({*(s for s in SHAPES if s not in BASE_SHAPES), *(s for s in STYLES if s != "flat")})
    for shape, style in (("star", "striped"), ("hexagon", "neon"), ("square", "dotted"), ("arrow", "flat")):
        texts = [t for _ in range(60) for t in captions(centred(shape, style), rng, unnamed=pool_concepts).values()]
        for text in texts:
            if shape in pool_concepts:
                # "star shape" is a paraphrase of the star; the generic noun "shape" alone is not.
                assert not any(word in text for word in SHAPE_WORDS[shape] if word != "shape"), text
            if style in pool_concepts:
                assert not any(word in text for word in _names(style=style)), text
                assert any(word in text for word in ("patterned", "textured", "with a pattern", "with a texture")), text
        if shape not in pool_concepts:
            assert sum(any(word in text for word in SHAPE_WORDS[shape]) for text in texts) > len(texts) * 0.8
    # Style words are generic: a striped and a dotted scene draw their words from the same set.
    words = lambda style: {t for _ in range(80) for t in captions(centred("circle", style), np.random.default_rng(5),
                                                                   unnamed=pool_concepts).values()}
    assert words("striped") == words("dotted")
    with pytest.raises(ValueError, match="unknown shapes or styles"):
        captions(centred("circle", "flat"), rng, unnamed=frozenset({"cubist"}))


def test_prompts_name_what_is_given_and_nothing_else():
    assert prompt_for("hexagon", "striped") == "a hexagon in striped style"
    assert prompt_for("arrow", "outlined", "orange") == "an orange arrow in outlined style"
    assert prompt_for(shape="ring") == "a ring"
    assert "striped" in prompt_for(style="striped") and "object" in prompt_for(style="striped")
    rng = np.random.default_rng(2)
    variants = {prompt_for("star", "neon", "pink", rng=rng) for _ in range(40)}
    assert len(variants) >= 5
    held_out = {prompt_for("star", "neon", "pink", rng=rng, held_out_template=True) for _ in range(40)}
    assert len(held_out) >= 5
    for prompt in held_out:
        assert "pink" in prompt and any(word in prompt for word in SHAPE_WORDS["star"]), prompt
    with pytest.raises(ValueError, match="unknown style"):
        prompt_for(style="cubist")


def test_held_out_templates_never_appear_in_training_captions():
    rng = np.random.default_rng(3)
    training = [caption for _ in range(600) for caption in captions(random_scene(rng), rng).values()]
    training += [prompt_for(*attributes, rng=rng) for attributes in
                 itertools.product((None, *SHAPES[:4]), (None, *STYLES), (None, "red"))]
    for marker in HELD_OUT_MARKERS:
        assert not any(marker in caption for caption in training), marker
    held_out = [prompt_for("cross", "dotted", "cyan", rng=rng, held_out_template=True) for _ in range(60)]
    assert set(held_out).isdisjoint(training)
    for template_marker in ("picture showing", "illustration depicting", "draw me"):
        assert any(template_marker in prompt for prompt in held_out)  # every held-out template is reachable


def test_evaluator_inputs_and_feature_shapes():
    torch.manual_seed(0)
    evaluator = Evaluator(width=8, feature_dim=16).eval()
    images = render_batch([random_scene(np.random.default_rng(seed)) for seed in range(3)])
    features = evaluator.features(images)
    assert features.shape == (3, 16)
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(evaluator.features(to_tensor(images)), features)
    predicted = evaluator.predict(images)
    assert set(predicted) == {"shape", "style", "colour"} and all(len(v) == 3 for v in predicted.values())
    assert predicted["colour"][0] in COLOURS
    with pytest.raises(ValueError, match="64x64"):
        evaluator.predict(np.zeros((1, 32, 32, 3), np.uint8))


def test_evaluator_training_lowers_the_loss_and_round_trips(tmp_path):
    messages = []
    evaluator = train_evaluator(seed=0, steps=30, batch=16, width=8, progress=messages.append)
    losses = evaluator.train_record["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, (losses[:5], losses[-5:])
    assert messages and "loss" in messages[-1] and "accuracy" in messages[-1]
    again = train_evaluator(seed=0, steps=3, batch=4, width=8, progress=lambda message: None)
    same = train_evaluator(seed=0, steps=3, batch=4, width=8, progress=lambda message: None)
    assert again.train_record["losses"] == same.train_record["losses"]  # deterministic for a seed

    accuracy = evaluate_accuracy(evaluator, n=24, seed=5)
    assert set(accuracy) == {"shape_acc", "style_acc", "color_acc"}
    save_evaluator(evaluator, tmp_path / "evaluator", accuracy=accuracy)
    loaded = load_evaluator(tmp_path / "evaluator")
    images = render_batch([random_scene(np.random.default_rng(seed)) for seed in range(6)])
    assert loaded.predict(images) == evaluator.predict(images)
    assert torch.equal(loaded.features(images), evaluator.features(images))
    assert loaded.accuracy == accuracy and loaded.train_record["steps"] == 30


def test_the_evaluator_can_learn_from_the_decoders_hand_as_well():
    """A share of each batch goes through the world's autoencoder (here a stand-in that blurs); the rest stays clean."""
    seen = []

    def blur(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.shape[0])
        return torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)

    evaluator = train_evaluator(seed=0, steps=4, batch=8, width=8, progress=lambda message: None, round_trip=blur,
                                round_trip_share=0.25)
    assert seen == [2, 2, 2, 2] and evaluator.train_record["round_trip_share"] == 0.25
    assert train_evaluator(seed=0, steps=1, batch=4, width=8, progress=lambda m: None).train_record[
        "round_trip_share"] == 0.0
    with pytest.raises(ValueError, match="round_trip_share must be in"):
        train_evaluator(seed=0, steps=1, batch=4, width=8, round_trip=blur, round_trip_share=1.5)


def test_loading_a_folder_that_is_not_an_evaluator_fails_in_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no world evaluator") as missing:
        load_evaluator(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    (tmp_path / "evaluator.json").write_text('{"format": "something-else"}')
    (tmp_path / "evaluator.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is not a world evaluator"):
        load_evaluator(tmp_path)


def test_scene_fields_are_the_documented_ones():
    assert [field.name for field in dataclasses.fields(Scene)] == [
        "shape", "style", "colour", "size", "cx", "cy", "rotation", "background", "seed"]
