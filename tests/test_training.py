"""Training the tiny SDXL model: what a run leaves behind, resume, the 8-bit optimizer, latent caching."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import TrainingCancelled
from engine.training.run_dir import RunDir
from engine.training.trainer import SDXLLoRATrainer, train
from tests.conftest import tiny_train_config

pytestmark = pytest.mark.slow


@pytest.mark.image
def test_a_run_leaves_lora_samples_metrics_and_a_full_record(trained_run, photos):
    from engine.prep import Manifest, is_prepared_dataset

    run = RunDir(trained_run)
    assert run.lora.is_file()
    assert sorted(p.name for p in run.samples.glob("*.png")) == [
        "step-000000.png", "step-000003.png", "step-000006.png"]
    training_photos = {p.name for p in (trained_run / "dataset" / "images").glob("*.png")}
    for grid in run.samples.glob("*.png"):
        scores = json.loads(grid.with_suffix(".json").read_text())
        assert len(scores["identity_scores"]) == 1 and len(scores["identity_scores"][0]) == 1
        # The tiny model draws noise: no face, and nothing like any training photo.
        assert scores["likeness"] is None and scores["faces_found"] == 0 and scores["memorisation"] < 0.2
        (picture,), = scores["picture_measures"]
        assert picture["nearest_photo"] in training_photos and picture["photo_hash_bits"] > 4
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"loss", "lr", "seconds_per_step", "peak_memory_mb"} for r in rows)
    record = json.loads(run.run_json.read_text())
    assert record["status"] == "done"
    # Raw photos went through prep into the run directory; training used what prep accepted.
    assert record["dataset"] == str(trained_run / "dataset") and is_prepared_dataset(record["dataset"])
    assert record["dataset_prepared"] is True
    assert record["num_images"] == Manifest.read(trained_run / "dataset" / "manifest.json").accepted > 0
    assert "identity_score_last_grid" in record
    assert record["config"]["rank"] == 4 and record["lora_rank"] == 4
    assert record["base"]["kind"] == "tiny"
    assert record["device"] == "cpu" and record["peak_memory_mb"] > 0 and record["wall_time_s"] > 0
    assert record["versions"]["torch"] and record["versions"]["diffusers"]
    assert record["final_loss"] == rows[-1]["loss"]
    # Which step to use, and why: with no face in any grid, none, said in a sentence; the curves anyway.
    sampled = [r for r in rows if "memorisation" in r]
    assert [r["step"] for r in sampled] == [3, 6]
    assert all(r["likeness"] is None and r["faces_found"] == 0 and r["variety"] is None for r in sampled)
    assert record["recommendation"]["step"] is None and record["recommended_step"] is None
    assert "no faces found" in record["recommendation"]["reason"]
    assert record["best_likeness"] is None
    from PIL import Image

    with Image.open(trained_run / "curves.png") as curves:
        assert curves.size == (1000, 800)
        assert curves.text["Title"].startswith(f"{trained_run.name} (tiny, rank {record['lora_rank']}, 6 steps) · ")
    assert run.checkpoint_steps() == [3]


def test_lora_file_is_kohya_layout_with_rank_and_alpha(trained_run):
    from safetensors import safe_open

    with safe_open(str(RunDir(trained_run).lora), "pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    assert all(float(v) == 4.0 for k, v in load_file(str(RunDir(trained_run).lora)).items() if k.endswith(".alpha"))


def test_trained_lora_changes_the_unet(trained_run):
    # lora_up starts at zero; after training it must not be, or nothing was learned.
    weights = load_file(str(RunDir(trained_run).lora))
    ups = [v for k, v in weights.items() if ".lora_up." in k]
    assert ups and any(v.abs().max() > 0 for v in ups)


@pytest.mark.image
def test_resumed_run_follows_the_uninterrupted_loss_curve(tmp_path, dataset, settings, tiny_model):
    straight = tmp_path / "straight"
    train(tiny_train_config(dataset, straight, sample_every=0), settings)

    stopped = tmp_path / "stopped"

    def stop_after_four(step: int) -> None:
        if step == 4:
            raise TrainingCancelled()

    # No periodic checkpoint: the cancel itself keeps the step it stopped on (a step boundary), so
    # resume carries on from step 4 rather than starting again at 0.
    with pytest.raises(TrainingCancelled):
        train(tiny_train_config(dataset, stopped, sample_every=0, checkpoint_every=0), settings,
              step_hook=stop_after_four)
    assert RunDir(stopped).read_run()["status"] == "cancelled"
    assert RunDir(stopped).checkpoint_steps() == [4]
    train(tiny_train_config(dataset, stopped, sample_every=0, checkpoint_every=0, resume=True), settings)

    a, b = RunDir(straight).read_metrics(), RunDir(stopped).read_metrics()
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    wa, wb = load_file(str(RunDir(straight).lora)), load_file(str(RunDir(stopped).lora))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


@pytest.mark.image
def test_optimizer_state_is_8bit(tmp_path, dataset, settings, tiny_model):
    # bitsandbytes keeps tensors under 4,096 elements in 32-bit; rank 64 makes the tiny model's
    # LoRA matrices as large as that, as every SDXL-size LoRA matrix is.
    out = tmp_path / "run"
    train(tiny_train_config(dataset, out, steps=2, rank=64, checkpoint_every=1, sample_every=0,
                            optimizer="adamw8bit"), settings)
    state = torch.load(RunDir(out).checkpoint_path(1) / "optimizer.pt", weights_only=False)["state"]
    moments = []
    for param_state in state.values():
        quant = param_state.get("__bnb_optimizer_quant_state__", param_state)
        quant = quant[0] if isinstance(quant, tuple) else quant
        moments += [quant[k] for k in ("state1", "state2")]
    assert len(moments) == 2 * len(state) > 0
    assert all(t.dtype == torch.uint8 for t in moments)
    # Resumed with the optimizer on auto (where the CPU would choose torch AdamW), the run keeps the
    # 8-bit optimizer its checkpoint's state belongs to.
    resumed = SDXLLoRATrainer(tiny_train_config(dataset, out, steps=3, rank=64, sample_every=0, resume=True), settings)
    resumed.check_inputs()
    assert resumed.plan.optimizer == "adamw8bit"


def test_savers_are_chosen_for_the_device_and_recorded_with_why(trained_run):
    # The tiny model at 64 px fits this machine's RAM many times over: no saver is worth its cost.
    record = RunDir(trained_run).read_run()
    savers = record["savers"]
    assert (savers["gradient_checkpointing"], savers["optimizer"]) == (False, "adamw")
    assert "RAM free: no saver needed" in savers["reason"]
    assert set(record["estimated_phase_peak_gib"]) == {"caching", "load", "loop", "sampling"}


def test_vae_encoder_runs_once_per_image_and_never_on_more_than_the_plan_says(tmp_path, dataset, settings,
                                                                              tiny_model):
    n_images = len(list((dataset / "images").glob("*.png")))
    trainer = SDXLLoRATrainer(tiny_train_config(dataset, tmp_path / "run", steps=3 * n_images, sample_every=0,
                                                checkpoint_every=0), settings)
    trainer.check_inputs()
    trainer.load()
    encoded = []
    # Observing the real VAE: a forward hook counts the images in every batch it encodes.
    trainer.vae.encoder.register_forward_hook(lambda _m, inputs, _o: encoded.append(inputs[0].shape[0]))
    trainer.run()
    assert sum(encoded) == n_images
    assert n_images > 1 and max(encoded) <= trainer.plan.vae_encode_batch == 1


def test_uncached_latents_are_encoded_within_the_plan_too(tmp_path, dataset, settings, tiny_model):
    trainer = SDXLLoRATrainer(tiny_train_config(dataset, tmp_path / "run", steps=2, batch_size=3, sample_every=0,
                                                checkpoint_every=0, cache_latents=False), settings)
    trainer.check_inputs()
    trainer.load()
    encoded = []
    trainer.vae.encoder.register_forward_hook(lambda _m, inputs, _o: encoded.append(inputs[0].shape[0]))
    trainer.run()
    assert sum(encoded) == 2 * 3 and max(encoded) <= trainer.plan.vae_encode_batch


def test_text_encoder_lora_and_prior_preservation_train_and_save(tmp_path, dataset, settings, tiny_model):
    out = tmp_path / "run"
    train(tiny_train_config(dataset, out, steps=2, train_text_encoder=True, prior_preservation=True,
                            num_class_images=2, checkpoint_every=0, sample_every=0), settings)
    keys = load_file(str(RunDir(out).lora)).keys()
    assert any(k.startswith("lora_te1_") for k in keys)
    assert any(k.startswith("lora_te2_") for k in keys)
    assert len(list(settings.class_images_dir.glob("*/*.png"))) >= 2


def test_checkpoints_keep_the_newest_and_every_sample_step(tmp_path, dataset, settings, tiny_model):
    out = tmp_path / "run"
    train(tiny_train_config(dataset, out, steps=7, checkpoint_every=2, checkpoints_keep=2, sample_every=0), settings)
    assert RunDir(out).checkpoint_steps() == [4, 6]
    # Sampled every 3 steps: step 3's checkpoint is made and kept (the recommendation may name it);
    # step 2 is neither new nor sampled.
    sampled = tmp_path / "sampled"
    train(tiny_train_config(dataset, sampled, steps=7, checkpoint_every=2, checkpoints_keep=2, sample_every=3),
          settings)
    assert RunDir(sampled).checkpoint_steps() == [3, 4, 6]


def test_sample_grids_decode_as_the_pipeline_would(tiny_model):
    # The trainer denoises to latents and decodes them itself (so it can tile); untiled, that must be
    # exactly the picture diffusers' pipeline draws.
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from engine.training.sample_grid import decode_latents

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a photo of sks person", height=64, width=64, num_inference_steps=2, guidance_scale=5.0)
    image = pipe(**args, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    latents = pipe(**args, generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images
    assert np.array_equal(np.asarray(decode_latents(pipe.vae, latents, None)), np.asarray(image))
    # Tiled, the decoder never sees more latent pixels at once than the tile holds (a forward hook
    # observes the real decoder), and the VAE is left untiled for the next user.
    sizes = []
    pipe.vae.decoder.register_forward_hook(lambda _m, inputs, _o: sizes.append(tuple(inputs[0].shape[-2:])))
    tiled = decode_latents(pipe.vae, latents, 32)
    assert tiled.size == image.size and len(sizes) > 1 and max(max(s) for s in sizes) <= 32 // 8
    assert not pipe.vae.use_tiling


GRID_PROMPTS = ["a photo of sks person", "sks person on a beach", "a painting of sks person"]


@pytest.mark.parametrize("frozen_text", [True, False], ids=["prompts pre-encoded", "prompts as text"])
def test_a_grid_drawn_in_batches_has_the_pixels_of_one_drawn_image_by_image(tiny_model, frozen_text):
    # The trainer's two paths: embeddings cached before the loop and its own tiled decode, or prompts
    # through the (trained) text encoders and the pipeline's decode.
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from engine.training.sample_grid import PromptEmbeds, decode_latents, render_images

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    embeds = None
    if frozen_text:
        embeds = []
        for prompt in GRID_PROMPTS:
            hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
            embeds.append(PromptEmbeds(hidden, pooled))
    decoded = []

    def decode(latents):
        decoded.append(latents.shape[0])
        return decode_latents(pipe.vae, latents, None)

    passes = []
    pipe.unet.register_forward_hook(lambda _m, inputs, _o: passes.append(inputs[0].shape[0]))
    steps, seeds = 6, (0, 1)

    def draw(batch):
        passes.clear()
        decoded.clear()
        fractions = []
        rows = render_images(pipe, GRID_PROMPTS, seeds, resolution=64, steps=steps, embeds=embeds,
                             decode=decode if frozen_text else None, on_progress=fractions.append, batch=batch)
        assert [len(row) for row in rows] == [2, 2, 2]
        # Progress after every denoising step of every pass, over the whole grid.
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        assert len(fractions) == steps * -(-6 // batch)
        return np.stack([np.asarray(image, dtype=np.int16) for row in rows for image in row])

    alone = draw(1)
    assert passes == [2] * 6 * steps  # each image with its unconditional twin (guidance)
    # 4 a pass over 6 images: the UNet sees 4 images (8 with guidance), then the 2 left; never more.
    four = draw(4)
    assert passes == [8] * steps + [4] * steps
    assert decoded == ([1] * 6 if frozen_text else [])  # the VAE still decodes one image at a time
    whole = draw(6)
    assert passes == [12] * steps
    # Same starting noise per image (a generator each, seeded as alone); batched matrix products round
    # differently in the last bits. Measured: at most 1/255 on under 0.01 % of the pixels.
    for batched in (four, whole):
        assert np.abs(batched - alone).max() <= 2
        assert (batched != alone).mean() < 0.001
    # A different seed is a different picture: the comparison above could tell them apart.
    assert np.abs(alone[0] - alone[1]).max() > 2 * 16


def test_the_trainer_draws_its_grids_in_the_batch_its_plan_says(tmp_path, dataset, settings, tiny_model):
    from dataclasses import replace

    trainer = SDXLLoRATrainer(tiny_train_config(dataset, tmp_path / "run", steps=1, sample_every=1, sample_steps=2,
                                                checkpoint_every=0, sample_seeds=(0, 1),
                                                validation_prompts=tuple(GRID_PROMPTS)), settings)
    trainer.check_inputs()
    # The tiny model's estimate is flat: the plan finds room for the whole grid of 3 x 2.
    assert trainer.plan.sample_batch == 6
    # A plan with room for 4 of the 6: the UNet must denoise 4 (8 with guidance), then 2.
    trainer.plan = replace(trainer.plan, sample_batch=4)
    trainer.load()
    sampled = []
    trainer.unet.register_forward_hook(
        lambda module, inputs, _o: None if module.training else sampled.append(inputs[0].shape[0]))
    trainer.run()
    assert sampled == ([8] * 2 + [4] * 2) * 2  # two grids (steps 0 and 1), two denoising steps a pass
    run = RunDir(tmp_path / "run")
    assert run.read_run()["savers"]["sample_batch"] == 4
    grid = json.loads(run.sample_path(1).with_suffix(".json").read_text())
    assert grid["sample_batch"] == 4 and grid["drawing_seconds"] > 0


def test_weights_load_straight_into_the_training_dtype_with_the_vae_in_fp32(tiny_model):
    # No fp32 copy of the UNet first (10 GB of RAM for SDXL's); the VAE alone stays fp32, where SDXL's is safe.
    from engine.models.base_model import BaseModelSource, load_sdxl_pipeline

    pipe = load_sdxl_pipeline(BaseModelSource("tiny", "folder", str(tiny_model)),
                              torch_dtype={"default": torch.bfloat16, "vae": torch.float32})
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32


def test_a_run_says_its_phase_and_its_eta_counts_the_grids_left(tmp_path, dataset, settings, tiny_model):
    """Loading, caching, each sample grid k/n with its own progress, then training; the ETA after a
    step includes the grids still to draw, at the pace of the last one."""
    from engine.events import Phase, Progress, SampleReady

    events = []
    train(tiny_train_config(dataset, tmp_path / "run", steps=4, sample_every=2, sample_steps=4,
                            checkpoint_every=0), settings, on_event=events.append)
    phases = [(e.name, e.index, e.total) for e in events if isinstance(e, Phase) and e.fraction in (None, 0.0)]
    assert phases == [("loading", 0, 0), ("caching", 0, 0), ("sampling", 1, 3), ("training", 0, 0),
                      ("sampling", 2, 3), ("training", 0, 0), ("sampling", 3, 3), ("training", 0, 0)]
    fractions = [e.fraction for e in events if isinstance(e, Phase) and e.name == "sampling" and e.index == 1]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert events.index(next(e for e in events if isinstance(e, SampleReady))) > events.index(
        next(e for e in events if isinstance(e, Phase) and e.fraction == 1.0))
    first = next(e for e in events if isinstance(e, Progress) and e.step == 1)
    assert first.eta_seconds > first.seconds_per_step * 3  # three steps left, and two grids
