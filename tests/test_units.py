"""The engine's pure parts: sweeps, templates, config files, grids, the kohya key mapping."""

from __future__ import annotations

import pytest
from PIL import Image

from engine.errors import LikenessError
from engine.generation.sweeps import check_template, expand, parse_sweep, placeholders


def test_parse_sweep_types_parameter_axes_and_keeps_placeholder_values_as_text():
    assert parse_sweep("age=5,10,18") == ("age", ["5", "10", "18"])
    assert parse_sweep("lora_scale=0,0.5,1") == ("lora_scale", [0.0, 0.5, 1.0])
    assert parse_sweep("seed=1, 2") == ("seed", [1, 2])


@pytest.mark.parametrize("text", ["age", "age=", "=1,2", "age=1,,2", "steps=0", "seed=x", "temperature=1.5"])
def test_parse_sweep_rejects_malformed_axes(text):
    with pytest.raises(LikenessError):
        parse_sweep(text)


def test_expand_varies_the_first_axis_slowest():
    combos = expand({"a": [1, 2], "b": ["x", "y"]})
    assert combos == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_template_placeholders_must_all_have_values():
    assert placeholders("{token} {class_word} at {age}, {age}") == ["token", "class_word", "age"]
    check_template("{token} at {age}", {"age": ["5"]}, {"token": "sks"})
    with pytest.raises(LikenessError, match="has no value"):
        check_template("{token} at {age}", {}, {"token": "sks"})
    with pytest.raises(LikenessError, match="not a placeholder"):
        check_template("{token}", {"hair": ["red"]}, {"token": "sks"})
    with pytest.raises(LikenessError, match="plain name"):
        placeholders("{0} and {a.b}")


def test_config_file_toml_and_yaml_fill_the_train_config(tmp_path):
    import argparse

    from engine.commands.common import build_config
    from engine.training.config import TrainConfig

    toml = tmp_path / "run.toml"
    toml.write_text('steps = 40\nclass-word = "man"\nrank = 8\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("steps: 50\nlr: 0.0002\n")
    args = argparse.Namespace(config=toml, data=tmp_path, out=tmp_path / "o", rank=32)
    config = build_config(TrainConfig, args)
    assert (config.steps, config.class_word, config.rank) == (40, "man", 32)  # the flag beats the file
    config = build_config(TrainConfig, argparse.Namespace(config=yaml, data=tmp_path, out=tmp_path / "o"))
    assert (config.steps, config.lr) == (50, 0.0002)


def test_instance_and_sample_prompts_use_token_and_class_word(tmp_path):
    from engine.training.config import TrainConfig

    config = TrainConfig(data=tmp_path, out=tmp_path, token="ohwx", class_word="man")
    assert config.instance_prompt == "a photo of ohwx man"
    assert config.sample_prompts()[0] == "a photo of ohwx man"
    assert config.lora_alpha == config.rank
    with pytest.raises(ValueError, match="unknown placeholder"):
        TrainConfig(data=tmp_path, out=tmp_path, validation_prompts=("{tokn} person",))


def test_labelled_grid_places_every_image_under_its_header():
    from engine.grid import labelled_grid

    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    grid = labelled_grid([[red, blue], [blue, red]], ["row a", "row b"], ["col 1", "col 2"], title="t")
    width, height = grid.size
    assert width > 64 and height > 64
    # The bottom-right cell is the last image pasted: red.
    assert grid.getpixel((width - 5, height - 5)) == (255, 0, 0)
    assert grid.getpixel((width - 37, height - 5)) == (0, 0, 255)


def test_a_grid_title_wraps_to_the_grid_and_is_drawn_above_the_images():
    from engine.grid import labelled_grid

    red = Image.new("RGB", (32, 32), (255, 0, 0))
    short = labelled_grid([[red, red]], ["a"], ["b", "c"], title="t")
    long = labelled_grid([[red, red]], ["a"], ["b", "c"], title="a photo of sks person at age {age} · run r · step 30")
    assert long.height > short.height and long.width == short.width  # more lines, never wider
    top = long.crop((0, 0, long.width, long.height - 32))
    assert any(pixel[0] < 100 for pixel in top.getdata())  # ink: the title is drawn


def test_a_generated_grid_is_titled_with_prompt_run_step_and_seed(tmp_path):
    from engine.generation.generator import GenerateConfig, grid_heading

    (tmp_path / "me").mkdir()
    config = GenerateConfig(lora=tmp_path / "me", prompt="a photo of {token} {class_word} at age {age}", seed=7)
    fixed = {"token": "sks", "class_word": "man"}
    # The prompt as drawn, the swept placeholder kept: the columns name its values.
    assert grid_heading(config, {"age": [5, 80]}, fixed, None) == (
        '"a photo of sks man at age {age}" · run me · final step · seed 7')
    assert "· step 20 ·" in grid_heading(config, {"age": [5, 80]}, fixed, 20)  # the recommended step, say
    swept = grid_heading(config.model_copy(update={"step": 20}), {"seed": [1, 2], "age": [5]}, fixed, 20)
    assert "step 20" in swept and "seed" not in swept.split("·")[-1]


@pytest.mark.parametrize(("module", "expected"), [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0", "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0"),
    ("mid_block.attentions.0.transformer_blocks.3.attn1.to_k", "middle_block.1.transformer_blocks.3.attn1.to_k"),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v", "output_blocks.2.1.transformer_blocks.0.attn2.to_v"),
    ("up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q", "output_blocks.3.1.transformer_blocks.1.attn1.to_q"),
])
def test_sdxl_unet_modules_map_to_the_layout_kohya_files_use(module, expected):
    from engine.models.lora_files import _sgm_unet_module

    assert _sgm_unet_module(module, layers_per_block=2) == expected


@pytest.mark.parametrize("module", ["encoder.layers.3.self_attn.q_proj", "text_model.encoder.layers.3.self_attn.q_proj"])
def test_kohya_names_of_the_first_text_encoder_are_standard_whichever_form_the_file_has(module):
    # transformers 5's CLIPTextModel has no text_model level; files written with it still export to
    # the names ComfyUI, A1111 and Forge look for.
    import torch

    from engine.models.lora_files import to_kohya

    state = {f"text_encoder.{module}.lora_linear_layer.down.weight": torch.ones(2, 8),
             f"text_encoder.{module}.lora_linear_layer.up.weight": torch.ones(8, 2)}
    out = to_kohya(state, {}, layers_per_block=2)
    name = "lora_te1_text_model_encoder_layers_3_self_attn_q_proj"
    assert set(out) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert float(out[f"{name}.alpha"]) == 2.0  # no alpha given: the rank, scale 1 (ours are folded)


def test_safetensors_bytes_do_not_depend_on_the_order_things_were_given_in():
    import json

    import torch

    from engine.models.lora_files import safetensors_bytes

    tensors = {"b": torch.ones(2), "a": torch.zeros(3)}
    metadata = {f"key{i}": str(i) for i in range(20)}
    one = safetensors_bytes(tensors, metadata)
    two = safetensors_bytes(dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert one == two
    size = int.from_bytes(one[:8], "little")
    assert size % 8 == 0 and list(json.loads(one[8:8 + size])["__metadata__"]) == sorted(metadata)


def test_images_smaller_than_the_training_size_are_enlarged_with_one_warning_naming_their_size(tmp_path):
    from PIL import Image

    from engine.training.images import load_training_images

    for index, side in enumerate((384, 384, 512)):
        Image.new("RGB", (side, side + 40), (index * 60, 90, 120)).save(tmp_path / f"p{index}.png")
    images, warnings = load_training_images(tmp_path, 1024)
    assert all(tuple(image.pixels.shape) == (3, 1024, 1024) for image in images)
    assert warnings == ["all 3 training images are smaller than 1024 px (the smallest 384 px): training enlarges "
                        "them up to 2.7x, which softens the likeness; --resolution 384 trains at their size"]
    _, warnings = load_training_images(tmp_path, 448)
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 training images are smaller than 448 px")
    assert load_training_images(tmp_path, 384)[1] == []


def test_a_small_grids_prompt_column_leaves_the_pictures_most_of_the_width_and_its_labels_are_text(tmp_path):
    from engine.grid import labelled_grid, save_png_atomically

    cell = Image.new("RGB", (64, 64), (255, 0, 0))
    prompts = ["a photo of sks man, studio portrait, soft window light, 85 mm", "sks man hiking", "sks man"]
    grid = labelled_grid([[cell, cell] for _ in prompts], prompts, ["seed 0", "seed 1"], title="run me · step 30")
    left = grid.width - 128
    assert left <= 0.4 * grid.width  # was 60 %: the prompt column took most of a tiny-model grid
    save_png_atomically(grid, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as saved:
        assert saved.info["Title"] == "run me · step 30"
        assert saved.info["Description"] == f"rows: {' | '.join(prompts)}; columns: seed 0 | seed 1"
