"""Generation: sweeps and grids, reproducibility from the sidecar alone, lora_scale 0 = base, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.generation.generator import GenerateConfig, generate

pytestmark = pytest.mark.slow


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def sweep(trained_run, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    config = GenerateConfig(lora=trained_run, prompt="a photo of {token} {class_word} at age {age}", steps=3,
                            sweeps={"age": ["5", "80"], "lora_scale": [0.0, 1.0], "temperature": [0.0, 1.0]},
                            out=out)
    return generate(config, settings)


@pytest.mark.image
def test_sweep_makes_every_combination_with_sidecars_and_grids(sweep):
    assert len(sweep.images) == 8
    prompts = {item.sidecar["prompt"] for item in sweep.images}
    assert prompts == {"a photo of sks person at age 5", "a photo of sks person at age 80"}
    for item in sweep.images:
        assert item.path.is_file() and item.path.with_suffix(".json").is_file()
        with Image.open(item.path) as image:
            assert "Steps: 3, Sampler: DDIM" in image.text["parameters"]
            assert json.loads(image.text["likeness"]) == item.sidecar
    # temperature is the third axis: one grid per value, age across, lora_scale down.
    assert sorted(p.name for p in sweep.grids) == ["grid-temperature=0.0.png", "grid-temperature=1.0.png"]
    with Image.open(sweep.grids[0]) as grid:
        assert grid.width >= 2 * 64 and grid.height >= 2 * 64


def test_image_is_reproduced_by_plain_diffusers_from_its_sidecar(sweep):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    item = next(i for i in sweep.images if i.sidecar["lora_scale"] == 1.0 and i.sidecar["temperature"] == 1.0)
    sidecar = json.loads(item.path.with_suffix(".json").read_text())
    pipe = StableDiffusionXLPipeline.from_pretrained(sidecar["base"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(sidecar["lora"], adapter_name="me")
    pipe.set_adapters(["me"], adapter_weights=[sidecar["lora_scale"]])
    image = pipe(
        sidecar["prompt"], negative_prompt=sidecar["negative_prompt"] or None,
        num_inference_steps=sidecar["steps"], guidance_scale=sidecar["guidance_scale"], eta=sidecar["eta"],
        width=sidecar["width"], height=sidecar["height"],
        generator=torch.Generator(sidecar["generator_device"]).manual_seed(sidecar["seed"]),
    ).images[0]
    # likeness fuses the LoRA into the weights, plain diffusers here does not: the same maths in
    # another order, so a pixel may differ by a level or two of 255.
    assert _max_difference(image, item.path) <= FUSED_TOLERANCE


# The fused path's pixels against the unfused path's: at most this many levels of 255 apart.
FUSED_TOLERANCE = 2


def _max_difference(image, path) -> int:
    return int(np.abs(np.asarray(image, dtype=np.int16) - pixels(path).astype(np.int16)).max())


def test_fused_lora_gives_the_unfused_pixels_and_is_refused_when_the_scale_changes(trained_run, settings, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    # 1.0, then 0.5 (unfuse, restore, fuse at the new scale), then 0 (the base exactly), then 1.0 again.
    result = generate(GenerateConfig(lora=trained_run, steps=2, sweeps={"lora_scale": [1.0, 0.5, 0.0, 0.75]},
                                     out=tmp_path), settings)
    first = result.images[0].sidecar
    pipe = StableDiffusionXLPipeline.from_pretrained(first["base"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(first["lora"], adapter_name="me")
    pipe.set_progress_bar_config(disable=True)
    for item in result.images:
        s = item.sidecar
        if s["lora_scale"]:
            pipe.enable_lora()
            pipe.set_adapters(["me"], adapter_weights=[s["lora_scale"]])
        else:
            pipe.disable_lora()
        unfused = pipe(s["prompt"], num_inference_steps=s["steps"], guidance_scale=s["guidance_scale"], eta=s["eta"],
                       width=s["width"], height=s["height"],
                       generator=torch.Generator("cpu").manual_seed(s["seed"])).images[0]
        if s["lora_scale"]:
            assert _max_difference(unfused, item.path) <= FUSED_TOLERANCE, s["lora_scale"]
        else:
            assert np.array_equal(np.asarray(unfused), pixels(item.path)), "scale 0 must be the base exactly"
    assert len({pixels(i.path).tobytes() for i in result.images}) == 4


def test_lora_scale_zero_is_exactly_the_base_model(sweep, trained_run, settings, tmp_path):
    base_only = generate(GenerateConfig(prompt="a photo of sks person at age 5", steps=3, width=64,
                                        base="tiny", out=tmp_path), settings)
    zero = next(i for i in sweep.images if i.sidecar["lora_scale"] == 0.0 and i.sidecar["temperature"] == 0.0
                and i.sidecar["placeholders"]["age"] == "5")
    one = next(i for i in sweep.images if i.sidecar["lora_scale"] == 1.0 and i.sidecar["temperature"] == 0.0
               and i.sidecar["placeholders"]["age"] == "5")
    assert np.array_equal(pixels(base_only.images[0].path), pixels(zero.path))
    assert not np.array_equal(pixels(zero.path), pixels(one.path)), "the trained LoRA should change the image"


def test_checkpoint_step_sweep_uses_each_checkpoint(trained_run, settings, tmp_path):
    result = generate(GenerateConfig(lora=trained_run, steps=2, sweeps={"step": [3, 6]}, out=tmp_path), settings)
    assert [i.sidecar["checkpoint_step"] for i in result.images] == [3, 6]
    assert "checkpoints/step-000003" in result.images[0].sidecar["lora"]
    assert result.images[1].sidecar["lora"] == str((trained_run / "lora.safetensors").resolve())
    assert not np.array_equal(pixels(result.images[0].path), pixels(result.images[1].path))


@pytest.mark.image
def test_kohya_export_loads_in_diffusers_and_draws_the_same_image(trained_run, sweep, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from engine.cli import main

    dest = tmp_path / "me-kohya.safetensors"
    assert main(["export", str(trained_run), "--out", str(dest)]) == 0
    keys = load_file(str(dest)).keys()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)

    item = next(i for i in sweep.images if i.sidecar["lora_scale"] == 1.0 and i.sidecar["temperature"] == 0.0)
    s = item.sidecar
    pipe = StableDiffusionXLPipeline.from_pretrained(s["base"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(str(dest))
    image = pipe(s["prompt"], num_inference_steps=s["steps"], guidance_scale=s["guidance_scale"], eta=s["eta"],
                 width=s["width"], height=s["height"], generator=torch.Generator("cpu").manual_seed(s["seed"])).images[0]
    # kohya's alpha/rank scaling is the same maths in another order, and ours is fused.
    assert _max_difference(image, item.path) <= FUSED_TOLERANCE


def test_run_directory_loads_by_path_in_diffusers(trained_run, tiny_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(trained_run))  # the directory itself, as other tools are pointed at it
    assert pipe.get_list_adapters()["unet"]


def test_generate_takes_a_kohya_style_lora_file(trained_run, settings, tmp_path):
    from engine.models.lora_files import export_kohya

    kohya = export_kohya(trained_run / "lora.safetensors", tmp_path / "k.safetensors", layers_per_block=2)
    result = generate(GenerateConfig(lora=kohya, base="tiny", steps=2, width=64, sweeps={"lora_scale": [0.0, 1.0]},
                                     out=tmp_path / "gen"), settings)
    assert [(i.sidecar["lora"], i.sidecar["lora_scale"]) for i in result.images] == [
        (str(kohya.resolve()), 0.0), (str(kohya.resolve()), 1.0)]
    assert not np.array_equal(pixels(result.images[0].path), pixels(result.images[1].path))


def test_images_are_scored_against_the_persons_face(trained_run, sweep):
    from engine.prep.identity_scores import identity_for_dataset, mean_score, score_images

    identity = identity_for_dataset(trained_run / "dataset")
    assert identity is not None
    face = Image.open(sorted((trained_run / "dataset" / "images").glob("*.png"))[0]).convert("RGB")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    face_score, noise_score = score_images(identity, [face.resize((256, 256)), noise])
    assert face_score is not None and face_score < 0.6 and noise_score is None
    assert mean_score([face_score, noise_score]) == pytest.approx(face_score, abs=1e-4)
    # Every generated image carries its score (the tiny model draws noise, so: no face).
    assert all("identity_score" in item.sidecar for item in sweep.images)


def test_generate_defaults_to_the_recommended_checkpoint_and_says_so(trained_run, settings, tmp_path, capsys):
    import shutil

    from engine.cli import main
    from engine.events import Log
    from engine.training.run_dir import RunDir

    # A run whose grids showed faces: its run.json recommends step 3, whose checkpoint the run kept.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("generations"))
    record = RunDir(run).read_run()
    record["recommendation"] = {"step": 3, "reason": "step 3 looks most like the person", "likeness": 0.4,
                                "memorisation": 0.2}
    RunDir(run).write_run(record)
    assert main(["generate", "--lora", str(run), "--steps", "2", "--out", str(tmp_path / "gen")]) == 0
    said = capsys.readouterr()
    assert "using step 3, the run's recommended checkpoint (step 3 looks most like" in said.err
    # Which file and which step it drew with, in so many words; each grid's path once.
    checkpoint = (run / "checkpoints" / "step-000003" / "lora.safetensors").resolve()
    assert f"drawing with LoRA {checkpoint} (step 3, the run's recommended step)" in said.err
    assert (said.out + said.err).count("grid: ") == 1
    sidecar = json.loads((tmp_path / "gen" / "images" / "0000.json").read_text())
    assert sidecar["checkpoint_step"] == 3
    assert sidecar["lora"] == str((run / "checkpoints" / "step-000003" / "lora.safetensors").resolve())
    # export hands over the LoRA generate drew with, not the final one, and says a tiny model's LoRA
    # is not one ComfyUI loads.
    assert main(["export", str(run), "--out", str(tmp_path / "default.safetensors")]) == 0
    said = capsys.readouterr().out
    assert "exported step 3, the run's recommended checkpoint" in said and "loads only on that model" in said
    assert main(["export", str(run), "--step", "3", "--out", str(tmp_path / "three.safetensors")]) == 0
    assert main(["export", str(run), "--step", "6", "--out", str(tmp_path / "final.safetensors")]) == 0
    capsys.readouterr()
    default, three, last = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("default", "three", "final"))
    assert all(torch.equal(default[k], three[k]) for k in three)
    assert not all(torch.equal(default[k], last[k]) for k in last)
    events = []

    # --step still wins, and a recommendation whose checkpoint is gone falls back to the final LoRA.
    chosen = generate(GenerateConfig(lora=run, step=6, steps=2, out=tmp_path / "gen6"), settings,
                      on_event=events.append)
    assert chosen.images[0].sidecar["lora"] == str((run / "lora.safetensors").resolve())
    assert any(e.message == f"drawing with LoRA {(run / 'lora.safetensors').resolve()} (the final LoRA, step 6, "
               "as --step asked)" for e in events if isinstance(e, Log))
    shutil.rmtree(run / "checkpoints" / "step-000003")
    events.clear()
    final = generate(GenerateConfig(lora=run, steps=2, out=tmp_path / "gen-final"), settings, on_event=events.append)
    assert final.images[0].sidecar["lora"] == str((run / "lora.safetensors").resolve())
    assert any("no checkpoint left" in e.message for e in events if isinstance(e, Log))
    assert any(e.message == f"drawing with LoRA {(run / 'lora.safetensors').resolve()} (the final LoRA)"
               for e in events if isinstance(e, Log))
