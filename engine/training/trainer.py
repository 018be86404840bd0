"""DreamBooth + LoRA for SDXL, read top to bottom.

    check inputs, choose savers -> load (on the CPU, in the training dtype), freeze, add LoRA
    -> caching: encoders and VAE on the device, embeddings and latents one image at a time, then off
    -> the UNet arrives -> (resume) -> loop: noise, predict, step, log, sample, checkpoint -> save

Each phase holds only what it needs on the device (engine.training.memory_plan estimates each one; run.json
records what each one measured on CUDA), and the savers are chosen for the device it runs on.

Every step draws its images, noise and timesteps from a generator seeded by (seed, step), so a
run stopped at a checkpoint and resumed follows exactly the loss curve of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LikenessError, TrainingCancelled
from engine.events import (
    EventSink,
    Log,
    OverfittingWarning,
    Phase,
    Progress,
    SampleReady,
    Started,
    ignore_events,
)
from engine.grid import save_png_atomically
from engine.models.base_model import BaseModelSource, load_sdxl_pipeline
from engine.models.device import (
    PhasePeaks,
    Placement,
    choose_placement,
    free_memory_gib,
    memory_kind,
)
from engine.models.lora_files import (
    TEXT_ENCODER_TARGET_MODULES,
    UNET_TARGET_MODULES,
    lora_info_for_run,
    save_lora,
)
from engine.outputs import first_missing
from engine.prep.identity_scores import identity_for_dataset, mean_score, score_label
from engine.settings import Settings
from engine.training.checkpoints import DamagedCheckpoint, load_checkpoint, newest_loadable, save_checkpoint
from engine.training.config import TrainConfig
from engine.training.curves import CURVES_FILE, draw_curves
from engine.training.eta import eta_seconds, grid_number, grids_after, grids_in_run
from engine.training.images import TrainingImage, load_training_images
from engine.training.memory_plan import MemoryPlan, choose_plan, estimate_phases
from engine.training.recommend import THRESHOLDS, best_likeness, overfitting, recommend
from engine.training.run_dir import RunDir, write_json_atomically
from engine.training.sample_grid import PromptEmbeds, decode_latents, render_images, sample_grid
from engine.training.sample_measures import GridMeasures, TrainingPhotos, measure_grid
from engine.training.stops import OutOfGpuMemory, out_of_memory_error, stop_status
from engine.versions import library_versions

StepHook = Callable[[int], None]
CURVES_REDRAW_S = 300.0


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    lora_path: Path
    steps: int
    final_loss: float | None
    wall_time_s: float
    peak_memory_mb: float


def _step_generator(seed: int, salt: int):
    import torch

    # A large odd multiplier keeps (seed, salt) pairs from colliding for any realistic run length.
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + salt)


class SDXLLoRATrainer:
    """One training run. ``load()`` brings the models in; ``run()`` does everything else."""

    def __init__(self, config: TrainConfig, settings: Settings, on_event: EventSink = ignore_events,
                 step_hook: StepHook | None = None):
        self.config = config
        self.settings = settings
        self.on_event = on_event
        self.step_hook = step_hook
        self.run_dir = RunDir(config.out)
        self.placement: Placement | None = None
        self.plan: MemoryPlan | None = None
        self.base: BaseModelSource | None = None
        self.pipe = None
        self.seconds_per_grid: float | None = None  # the last sample grid's wall time, for the ETA
        self.replacing = False  # an earlier run waits in RUN/.replaced until this one's first step
        self.resume_from: tuple[int, dict] | None = None  # (step, its files read): the checkpoint a resume loads
        self._phase_sent = 0.0

    # 1. Inputs are checked before anything heavy loads: a typo costs a second, not a minute.
    def check_inputs(self) -> None:
        from engine.prep import is_prepared_dataset
        from engine.training.checks import check_fits_in_ram, check_train_inputs

        self.base = check_train_inputs(self.config, self.settings)
        recovered = self.run_dir.recover_replaced()
        if recovered is not None:
            self.on_event(Log(recovered))

        # A raw photo folder goes through prep first, into the run directory, unless told otherwise.
        self.needs_prep = self.config.prep and not is_prepared_dataset(self.config.data)
        self.dataset = self.run_dir.dataset if self.needs_prep else self.config.data
        self.placement = self._device_placement()
        if self.config.resume and not self.run_dir.checkpoint_steps():
            raise LikenessError(f"--resume: {self.config.out} has no checkpoint to resume from")
        if self.config.compile_unet and not self.placement.is_cuda:
            raise LikenessError("--compile needs a CUDA GPU (compiling for the CPU needs a C++ toolchain and gains little)")
        # Savers are a means, not a default: on only where this device's free memory needs them.
        free = self._free_memory_gib()
        self.plan = choose_plan(self.config, free, on_cpu=not self.placement.is_cuda,
                                optimizer_of_resumed_run=self._resumed_optimizer())
        check_fits_in_ram(self.config, self.plan, self.placement, free)
        # The run directory is created last, once everything above holds.
        if not self.config.resume:
            self.replacing = self.run_dir.prepare_for_new_run(self.config.force, preps_dataset=self.needs_prep)

    # The seam engine.training.full_size_sim runs this trainer through: the device, its free memory, its
    # peak-memory meter and the pipeline's loading are the only things a simulated card replaces.
    memory_meter = None  # None: CUDA's own allocator statistics

    def _device_placement(self) -> Placement:
        return choose_placement(self.config.device, self.config.mixed_precision)

    def _free_memory_gib(self) -> float | None:
        return free_memory_gib(self.placement)

    def _load_pipeline(self, torch_dtype: dict):
        return load_sdxl_pipeline(self.base, torch_dtype=torch_dtype)

    def _resumed_optimizer(self) -> str | None:
        """The optimizer whose state the newest checkpoint holds: a resumed run must keep it."""
        if not self.config.resume:
            return None
        # The newest checkpoint that reads is the one resumed from; the ones skipped are said once, here.
        self.resume_from = newest_loadable(self.run_dir, lambda line: self.on_event(Log(line)))
        state = self.resume_from[1]["state"]
        # Checkpoints from before the savers were chosen per device all used the then default, 8-bit AdamW.
        return state.get("memory_plan", {}).get("optimizer", "adamw8bit")

    def _restore(self, optimizer, lr_scheduler) -> int:
        """Load the checkpoint chosen in check_inputs; one whose state does not fit after all is
        skipped for the next older one that reads (each load replaces all the state the last one set)."""
        step, files = self.resume_from
        while True:
            try:
                return load_checkpoint(self.run_dir.checkpoint_path(step), self._lora_models(), optimizer,
                                       lr_scheduler, files)
            except DamagedCheckpoint as error:
                self.on_event(Log(f"skipped the checkpoint at step {step}: {error}"))
                if not any(s < step for s in self.run_dir.checkpoint_steps()):
                    raise LikenessError(f"--resume: no checkpoint in {self.config.out} can be loaded "
                                        f"(the last tried, step {step}: {error})") from None
                step, files = newest_loadable(self.run_dir, lambda line: self.on_event(Log(line)), below=step)

    # 2. Load SDXL, freeze it, and add the LoRA layers that are the only thing trained.
    def load(self) -> None:
        from engine.quiet import quiet_libraries

        quiet_libraries()
        import torch
        from peft import LoraConfig

        if self.placement is None:
            self.check_inputs()
        placement = self.placement
        self.weight_dtype = getattr(torch, placement.weight_dtype)
        # Straight into the training dtype: an fp32 UNet first would take 10 GB of RAM on its own. The
        # VAE stays fp32: SDXL's VAE overflows in fp16. Everything stays on the CPU until its phase.
        self.pipe = self._load_pipeline({"default": self.weight_dtype, "vae": torch.float32})
        pipe = self.pipe
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2]
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        for model in (self.unet, self.vae, *self.text_encoders):
            model.requires_grad_(False)
        if self.config.channels_last:
            self.unet.to(memory_format=torch.channels_last)

        self.attention = self._choose_attention()
        # peft draws the LoRA's initial weights from torch's global generator: seed it, or two runs
        # with the same seed would start from different LoRAs.
        torch.manual_seed(self.config.seed)
        self.unet.add_adapter(LoraConfig(r=self.config.rank, lora_alpha=self.config.lora_alpha,
                                         init_lora_weights="gaussian", target_modules=UNET_TARGET_MODULES))
        if self.config.train_text_encoder:
            for encoder in self.text_encoders:
                encoder.add_adapter(LoraConfig(r=self.config.rank, lora_alpha=self.config.lora_alpha,
                                               init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGET_MODULES))
        if self.plan.gradient_checkpointing:
            self._checkpoint_blocks()
        # Trainable LoRA weights stay fp32 even when the frozen weights are half precision:
        # the optimizer's small updates would vanish in fp16.
        self.trainable = [p for m in self._lora_models().values() for p in m.parameters() if p.requires_grad]
        for param in self.trainable:
            param.data = param.data.float()

    # How a checkpointed block runs, (function, *args, **kwargs) -> output; None: torch's checkpoint. The
    # full-size simulator sets its own, which counts the recomputation in backward.
    recompute = None

    def _checkpoint_blocks(self) -> None:
        """Recompute in backward the blocks the plan names (every block where it names none)."""
        from engine.training.checkpointing import (
            TEXT_ENCODERS,
            checkpoint_blocks,
            text_encoder_layers,
            unet_blocks,
        )

        blocks = unet_blocks(self.unet)
        if self.config.train_text_encoder:
            for name, encoder in zip(TEXT_ENCODERS, self.text_encoders, strict=True):
                blocks.update(text_encoder_layers(encoder, name))
        try:
            checkpoint_blocks(blocks, self.plan.checkpointed if self.plan.checkpointed is not None else blocks,
                              self.recompute)
        except ValueError as error:
            raise LikenessError(f"gradient checkpointing: {error} in this base model") from None

    def _choose_attention(self) -> str:
        wanted = self.config.attention
        if wanted in ("auto", "xformers") and self.placement.is_cuda:
            try:
                import xformers  # noqa: F401

                self.unet.enable_xformers_memory_efficient_attention()
                return "xformers"
            except ImportError:
                if wanted == "xformers":
                    raise LikenessError("--attention xformers: xformers is not installed") from None
        elif wanted == "xformers":
            raise LikenessError("--attention xformers needs a CUDA GPU; use sdpa on the CPU")
        return "sdpa"  # diffusers' default processor is PyTorch's scaled_dot_product_attention

    def _lora_models(self) -> dict:
        models = {"unet": self.unet}
        if self.config.train_text_encoder:
            models["text_encoder"], models["text_encoder_2"] = self.text_encoders
        return models

    # 3. Text embeddings: once, before the loop, when the text encoders are frozen.
    def encode_prompt(self, prompt: str, grad: bool = False) -> PromptEmbeds:
        import torch

        hidden, pooled = [], None
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context, self._autocast():
            for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
                ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(encoder.device)
                output = encoder(ids, output_hidden_states=True)
                pooled = output[0]  # the second encoder's projected pooled output is SDXL's
                hidden.append(output.hidden_states[-2])  # SDXL conditions on the penultimate layer
        return PromptEmbeds(torch.cat(hidden, dim=-1), pooled)

    # 4. Latents: the VAE encoder runs once per image; each step samples from the cached distribution.
    # It encodes as many images at once as the plan says (one at 1024 px: 3 GiB of fp32 activations each).
    def latent_distribution(self, pixels: list):
        """The VAE's latent distribution (on the CPU) of ``pixels``, ``plan.vae_encode_batch`` at a time."""
        import torch

        means, stds, at_once = [], [], self.plan.vae_encode_batch
        with torch.no_grad():
            for start in range(0, len(pixels), at_once):
                batch = torch.stack(pixels[start:start + at_once]).to(self.placement.device, torch.float32)
                dist = self.vae.encode(batch).latent_dist
                means.append(dist.mean.cpu())
                stds.append(dist.std.cpu())
        return torch.cat(means), torch.cat(stds)

    def cache_latents(self, images: list[TrainingImage]):
        return self.latent_distribution([im.pixels for im in images])

    def _autocast(self):
        import torch

        if self.placement.is_cuda and self.weight_dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.weight_dtype)
        return contextlib.nullcontext()

    def _time_ids(self, image: TrainingImage):
        import torch

        size = self.config.resolution
        return torch.tensor([*image.original_size, *image.crop_top_left, size, size], dtype=torch.float32)

    # 5. The loop.
    def run(self) -> TrainResult:
        import torch
        import torch.nn.functional as F
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        started = time.perf_counter()
        if self.placement is None:
            self.check_inputs()
        if self.needs_prep:
            self._prepare_dataset()
        images, warnings = load_training_images(self.dataset, self.config.resolution)
        for warning in warnings:
            self.on_event(Log(warning))
        if self.pipe is None:
            self._phase("loading")
            self.load()
        config, run, placement = self.config, self.run_dir, self.placement
        run.samples.mkdir(parents=True, exist_ok=True)
        self.identity = identity_for_dataset(self.dataset)
        self.last_sample_score = None
        self.images, self.training_photos = images, None  # memorisation's references: at the first grid
        self.curves_drawn_at = -float("inf")
        record = self._run_record(len(images), status="running")
        run.write_run(record)
        self.phases = PhasePeaks(placement, self.memory_meter)

        # Caching latents and embeddings can run out of memory as surely as a step can.
        try:
            self._phase("caching")
            noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
            # Caching: only the text encoders and the VAE on the device; the UNet waits on the CPU.
            self.phases.enter("caching")
            for model in (*self.text_encoders, self.vae):
                model.to(placement.device)
            prior = self._prior_batch(noise_scheduler) if config.prior_preservation else None
            instance = None if config.train_text_encoder else self.encode_prompt(config.instance_prompt)
            latent_mean, latent_std = self.cache_latents(images) if config.cache_latents else (None, None)
            time_ids = torch.stack([self._time_ids(im) for im in images])
            sample_embeds = (None if config.train_text_encoder
                             else [self.encode_prompt(p) for p in config.sample_prompts()])
            if not config.train_text_encoder:
                # Everything the encoders had to say is cached: free their memory for the UNet.
                for encoder in self.text_encoders:
                    encoder.to("cpu")
            if config.cache_latents:
                self.vae.to("cpu")
            if placement.is_cuda:
                torch.cuda.empty_cache()

            # Load: the UNet arrives only now, into the room the encoders left.
            self.phases.enter("load")
            self.unet.to(placement.device)
            if config.compile_unet:
                self._compile_transformer_blocks()
            self.phases.enter("loop")
            optimizer = self._optimizer()
            lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                         num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.steps)
            first_step = 0
            if config.resume:
                first_step = self._restore(optimizer, lr_scheduler)
                run.truncate_metrics(first_step)
                self.on_event(Log(f"resumed from checkpoint at step {first_step}"))
            self.on_event(Started(first_step, config.steps))
            if config.sample_every and first_step == 0:
                self._save_samples(0, sample_embeds)
                self.phases.enter("loop")
            self._phase("training")

            def checkpoint(step: int) -> None:
                """The resumable state of ``step``, its LoRA named so a user can copy it into another tool."""
                save_checkpoint(run, step, self._lora_models(), optimizer, lr_scheduler,
                                config.model_dump(mode="json"), rank=config.rank, alpha=config.lora_alpha,
                                keep=config.checkpoints_keep, memory_plan=self.plan.to_json(),
                                sample_every=config.sample_every,
                                info=lora_info_for_run(record, f"{run.root.name}-step{step}"))
                run.write_run({**record, "steps_done": step, "wall_time_s": self._wall(record, started)})

            scaling = self.vae.config.scaling_factor
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            n_images, loss_value, step_times = len(images), None, []
            self.unet.train()
            for step in range(first_step + 1, config.steps + 1):
                t0 = time.perf_counter()
                gen = _step_generator(config.seed, step)
                # Images in epoch order: each epoch is a fresh permutation seeded by (seed, epoch).
                indices = []
                for k in range(config.batch_size):
                    g = (step - 1) * config.batch_size + k
                    perm = torch.randperm(n_images, generator=_step_generator(config.seed, -1 - g // n_images))
                    indices.append(int(perm[g % n_images]))
                index = torch.tensor(indices)
                if config.cache_latents:
                    eps = torch.randn(latent_mean[index].shape, generator=gen)
                    latents = latent_mean[index] + latent_std[index] * eps
                else:
                    mean, std = self.latent_distribution([images[i].pixels for i in indices])
                    latents = mean + std * torch.randn(mean.shape, generator=gen)
                latents = (latents - shift) * scaling
                batch_time_ids = time_ids[index]
                embeds = instance if instance is not None else self.encode_prompt(config.instance_prompt, grad=True)
                prompt_embeds = embeds.prompt_embeds.expand(len(indices), -1, -1)
                pooled = embeds.pooled_prompt_embeds.expand(len(indices), -1)
                if prior is not None:
                    latents = torch.cat([latents, prior["latents"][step % len(prior["latents"])][None]])
                    class_embeds = prior["embeds"] if prior["embeds"] is not None else self.encode_prompt(
                        config.class_prompt, grad=True)
                    prompt_embeds = torch.cat([prompt_embeds, class_embeds.prompt_embeds])
                    pooled = torch.cat([pooled, class_embeds.pooled_prompt_embeds])
                    batch_time_ids = torch.cat([batch_time_ids, prior["time_ids"][None]])

                noise = torch.randn(latents.shape, generator=gen)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          generator=gen)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                dev = placement.device
                with self._autocast():
                    prediction = self.unet(
                        noisy.to(dev, self.weight_dtype), timesteps.to(dev),
                        encoder_hidden_states=prompt_embeds.to(dev, self.weight_dtype),
                        added_cond_kwargs={"text_embeds": pooled.to(dev, self.weight_dtype),
                                           "time_ids": batch_time_ids.to(dev, self.weight_dtype)},
                        return_dict=False,
                    )[0]
                target = target.to(dev)
                if prior is not None:
                    prediction, prior_prediction = prediction[:-1], prediction[-1:]
                    target, prior_target = target[:-1], target[-1:]
                    loss = F.mse_loss(prediction.float(), target.float())
                    loss = loss + config.prior_loss_weight * F.mse_loss(prior_prediction.float(), prior_target.float())
                else:
                    loss = F.mse_loss(prediction.float(), target.float())
                loss.backward()
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                loss_value = loss.detach().item()
                seconds = time.perf_counter() - t0
                step_times.append(seconds)
                if self.replacing:
                    # The safe point: the base loaded, the caches built and a step taken on this device,
                    # so whatever could refuse this run (weights, architecture, memory) has had its say.
                    run.discard_replaced()
                    self.replacing = False
                recent = sorted(step_times[-20:])[len(step_times[-20:]) // 2]  # median: robust to sampling pauses
                lr = lr_scheduler.get_last_lr()[0]
                row = {"step": step, "loss": loss_value, "lr": lr, "seconds_per_step": seconds,
                       "peak_memory_mb": round(self.phases.peak_mb(), 1)}
                sampled = config.sample_every and (step % config.sample_every == 0 or step == config.steps)
                if sampled:
                    measures = self._save_samples(step, sample_embeds)
                    self.phases.enter("loop")
                    self._phase("training")
                    row.update(sample_identity_score=self.last_sample_score, **measures.metrics())
                run.append_metrics(row)
                if sampled:
                    self._judge(record, final=False)
                    run.write_run({**record, "steps_done": step, "wall_time_s": self._wall(record, started)})
                eta = eta_seconds(recent, config.steps - step, self.seconds_per_grid, grids_after(config, step))
                self.on_event(Progress(step, config.steps, loss_value, lr, recent, eta))
                # Sample steps get a checkpoint too: the recommended step must be there to generate from.
                if step < config.steps and (sampled or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                    checkpoint(step)
                if self.step_hook is not None:
                    try:
                        self.step_hook(step)
                    except TrainingCancelled:
                        # A cancel lands on a step boundary: keep this step, so resume carries on from
                        # here instead of from the last periodic checkpoint (or from step 0).
                        if step < config.steps and step not in run.checkpoint_steps():
                            checkpoint(step)
                        raise
        except BaseException as stop:
            status = stop_status(stop)
            self.phases.close()
            # The curves of a stopped run still say which step to use; drawing them must never hide why it stopped.
            with contextlib.suppress(Exception):
                self._judge(record, final=True)
            run.write_run({**record, "status": status, "wall_time_s": self._wall(record, started),
                           "phase_peak_memory_mb": self.phases.peaks_mb or None})
            if status == "out_of_memory":
                # Not a crash: say so in one line, keep the checkpoints, and offer the cloud.
                steps = run.checkpoint_steps()
                raise out_of_memory_error(config, placement.gpu_name, steps[-1] if steps else None) from stop
            raise

        lora_path = save_lora(run.root, **self._lora_models_kw(), rank=config.rank, alpha=config.lora_alpha,
                              info=lora_info_for_run(record, run.root.name))
        self._judge(record, final=True)
        wall = time.perf_counter() - started
        peak = self.phases.whole_run_mb()
        run.write_run({**record, "status": "done", "finished_at": _now(), "steps_done": config.steps,
                       "final_loss": loss_value, "wall_time_s": self._wall(record, started),
                       "identity_score_last_grid": self.last_sample_score,
                       "peak_memory_mb": round(peak, 1),
                       "phase_peak_memory_mb": self.phases.peaks_mb or None,
                       "median_seconds_per_step": (sorted(step_times)[len(step_times) // 2] if step_times else None)})
        return TrainResult(run.root, lora_path, config.steps, loss_value, wall, peak)

    @staticmethod
    def _wall(record: dict, started: float) -> float:
        """Wall time of the whole run, across resumes."""
        return round(record["wall_time_s_before_resume"] + time.perf_counter() - started, 2)

    def _prepare_dataset(self) -> None:
        from engine.prep import PrepConfig, is_prepared_dataset, prepare_photos

        if self.config.resume and is_prepared_dataset(self.dataset):
            return  # the interrupted run's dataset: the same images, so the same loss curve
        self.on_event(Log(f"preparing photos from {self.config.data} into {self.dataset}"))
        report = prepare_photos(PrepConfig(photos=self.config.data, out=self.dataset, size=self.config.resolution,
                                           token=self.config.token, class_word=self.config.class_word,
                                           force=True), settings=self.settings)
        self.on_event(Log(report.summary()))

    def _lora_models_kw(self) -> dict:
        models = self._lora_models()
        return {"unet": models["unet"], "text_encoder": models.get("text_encoder"),
                "text_encoder_2": models.get("text_encoder_2")}

    def _compile_transformer_blocks(self) -> None:
        """Regional compilation: each transformer block compiled once and reused by its twins, so
        compiling takes seconds instead of the minutes a whole-UNet compile does."""
        from diffusers.models.attention import BasicTransformerBlock

        for module in self.unet.modules():
            if isinstance(module, BasicTransformerBlock):
                module.compile()

    def _optimizer(self):
        import torch

        if self.plan.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(self.trainable, lr=self.config.lr, weight_decay=1e-4)
        return torch.optim.AdamW(self.trainable, lr=self.config.lr, weight_decay=1e-4)

    def _prior_batch(self, noise_scheduler) -> dict:
        """Class images drawn by the base model (cached across runs), their latents and embeddings."""
        import torch

        from engine.training.class_images import cached_class_images, ensure_class_images

        folder = cached_class_images(self, self.config, self.settings)
        if folder is None:
            # Drawn once per base, prompt and size, as a sample grid is: the prompt encoded first, then the
            # text encoders make room for the UNet (all three models together outgrow an 8 GB card).
            embeds = self.encode_prompt(self.config.class_prompt)
            for encoder in self.text_encoders:
                encoder.to("cpu")
            self.unet.to(self.placement.device)
            try:
                folder = ensure_class_images(self, self.config, self.settings, embeds)
            finally:
                self.unet.to("cpu")
                for encoder in self.text_encoders:
                    encoder.to(self.placement.device)
        class_images, _ = load_training_images(folder, self.config.resolution)
        mean, std = self.cache_latents(class_images)
        latents = mean + std * torch.randn(mean.shape, generator=_step_generator(self.config.seed, -10**9))
        return {"latents": latents,
                "embeds": None if self.config.train_text_encoder else self.encode_prompt(self.config.class_prompt),
                "time_ids": self._time_ids(class_images[0])}

    def sampling_pipeline(self, frozen_text: bool):
        """A pipeline over the training models; without text encoders when prompts are pre-encoded."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae, unet=self.unet, scheduler=self.pipe.scheduler, tokenizer=self.tokenizers[0],
            tokenizer_2=self.tokenizers[1],
            text_encoder=None if frozen_text else self.text_encoders[0],
            text_encoder_2=None if frozen_text else self.text_encoders[1],
        )

    def _judge(self, record: dict, final: bool) -> None:
        """Recommend a step from the metrics so far into ``record``; draw curves.png; warn of overfitting.

        Mid-run, curves.png is redrawn at most every CURVES_REDRAW_S: a drawing costs about a second of
        CPU, which a CPU run's sampling cannot spare every grid, and the TUI draws the live curves. The
        first grid and the run's end (done or stopped) always draw it.
        """
        rows = self.run_dir.read_metrics()
        recommendation = recommend(rows)
        record.update(recommendation=recommendation.to_json(), recommended_step=recommendation.step,
                      best_likeness=best_likeness(rows))
        if final or time.monotonic() - self.curves_drawn_at >= CURVES_REDRAW_S:
            run = f"{self.run_dir.root.name} ({self.base.spec}, rank {self.config.rank}, {self.config.steps} steps)"
            draw_curves(rows, recommendation, self.run_dir.root / CURVES_FILE, run)
            self.curves_drawn_at = time.monotonic()
        sign = None if final else overfitting(rows)
        if sign is not None:
            self.on_event(OverfittingWarning(sign.step, sign.cause, sign.message))

    def _phase(self, name: str, index: int = 0, total: int = 0, fraction: float | None = None) -> None:
        """Say what the run is doing; a grid's progress at most twice a second (and its end)."""
        now = time.perf_counter()
        if fraction is not None and 0 < fraction < 1 and now - self._phase_sent < 0.5:
            return
        self._phase_sent = now
        self.on_event(Phase(name, index, total, fraction))

    def _save_samples(self, step: int, embeds: list[PromptEmbeds] | None) -> GridMeasures:
        """Draw, measure and save the grid for ``step``; return its likeness, memorisation and variety."""
        import torch

        started = time.perf_counter()
        prompts = self.config.sample_prompts()
        grid = (grid_number(self.config, step), grids_in_run(self.config))
        self._phase("sampling", *grid, 0.0)
        self.phases.enter("sampling")
        # The VAE comes back for the grid and decodes in tiles, so sampling stays inside the loop's budget.
        self.vae.to(self.placement.device)
        self.unet.eval()
        pipe = self.sampling_pipeline(frozen_text=embeds is not None)
        pipe.set_progress_bar_config(disable=True)
        autocast_dtype = self.weight_dtype if self.placement.is_cuda else None
        # As many images a denoising pass as the plan found room for inside the loop's peak.
        rows = render_images(pipe, prompts, self.config.sample_seeds, resolution=self.config.resolution,
                             steps=self.config.sample_steps, embeds=embeds, autocast_dtype=autocast_dtype,
                             decode=lambda latents: decode_latents(self.vae, latents, self.plan.decode_tile_px),
                             on_progress=lambda fraction: self._phase("sampling", *grid, fraction),
                             batch=self.plan.sample_batch)
        drawing_s = time.perf_counter() - started
        if self.config.cache_latents:
            self.vae.to("cpu")
            if self.placement.is_cuda:
                torch.cuda.empty_cache()
        self.unet.train()
        if self.training_photos is None:
            self.training_photos = TrainingPhotos.from_training_images(self.images, self.identity)
        measures = measure_grid(self.identity, self.training_photos, rows)
        scores = [[p.face_distance for p in row] for row in measures.pictures]
        # A picture that reproduces a training photo is labelled a copy, not counted a success.
        labels = ([[score_label(p.face_distance) + (" copy" if p.memorisation >= THRESHOLDS.memorisation_limit else "")
                    for p in row] for row in measures.pictures] if self.identity is not None else None)
        path = self.run_dir.sample_path(step)
        save_png_atomically(sample_grid(rows, prompts, self.config.sample_seeds, step, labels,
                                        run=self.run_dir.root.name), path)
        self.last_sample_score = mean_score([s for row in scores for s in row])
        write_json_atomically(path.with_suffix(".json"), {
            "step": step, "prompts": prompts, "seeds": list(self.config.sample_seeds),
            # How the grid was drawn and how long that took (its measures not counted): the GPU
            # benchmark sets batches against one another with these.
            "sample_batch": self.plan.sample_batch, "drawing_seconds": round(drawing_s, 3),
            "identity_scores": scores, "identity_score_mean": self.last_sample_score, **measures.metrics(),
            "picture_measures": [[p.to_json() for p in row] for row in measures.pictures]})
        self.seconds_per_grid = time.perf_counter() - started
        metrics = measures.metrics()
        recommended = recommend(self.run_dir.read_metrics() + [{"step": step, **metrics}]).step
        self.on_event(SampleReady(step, path, self.last_sample_score, metrics["likeness"], metrics["memorisation"],
                                  metrics["variety"], recommended))
        return measures

    def _run_record(self, n_images: int, status: str) -> dict:
        previous = self.run_dir.read_run() or {}
        versions = library_versions()
        return {
            "likeness_version": versions["likeness"],
            "status": status,
            "config": self.config.model_dump(mode="json"),
            "num_images": n_images,
            "dataset": str(self.dataset),
            "dataset_prepared": self.identity is not None,
            "base": self.base.to_json(),
            "where": "local",
            "device": self.placement.device,
            "gpu_name": self.placement.gpu_name,
            "precision": self.placement.weight_dtype,
            "attention": self.attention,
            # Which savers this device called for and why, and the phases' estimated peaks to set
            # phase_peak_memory_mb (measured, CUDA) against.
            "savers": self.plan.to_json(),
            "estimated_phase_peak_gib": estimate_phases(self.config, self.plan,
                                                        on_cpu=not self.placement.is_cuda).phases,
            "lora_rank": self.config.rank,
            "lora_alpha": self.config.lora_alpha,
            "seed": self.config.seed,
            "steps": self.config.steps,
            "memory_kind": memory_kind(self.placement),
            # Which run this folder holds: kept by a resume, new when a run starts over (--force), so
            # whoever started the run can tell it is still theirs (the service's resume checks it).
            "run_id": (previous.get("run_id") if self.config.resume else None) or uuid.uuid4().hex,
            "started_at": previous.get("started_at", _now()) if self.config.resume else _now(),
            "wall_time_s_before_resume": previous.get("wall_time_s", 0.0) if self.config.resume else 0.0,
            "versions": versions,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def train(config: TrainConfig, settings: Settings, on_event: EventSink = ignore_events,
          step_hook: StepHook | None = None) -> TrainResult:
    """Train a LoRA as ``config`` says; events report progress, ``step_hook`` may cancel."""
    trainer = SDXLLoRATrainer(config, settings, on_event, step_hook)
    created = first_missing(config.out)
    try:
        trainer.check_inputs()
        return trainer.run()
    except BaseException as stop:
        # A run that stopped before its first step holds nothing worth keeping: a folder it created
        # goes again, so a failed command leaves the file system as it found it. Out of memory is the
        # exception: its run.json says so, and Continue on Modal carries on in that folder.
        run = RunDir(config.out)
        if trainer.replacing:
            # --force before the new run's first step: the run it was to replace comes back as it was
            # (Continue on Modal after an out of memory replaces it again there, with --force).
            try:
                run.put_back_replaced()
            except OSError as error:
                raise LikenessError(f"{stop}; and the run --force set aside could not be put back ({error}): it is in "
                                    f"{run.root}/.replaced, which the next run started there puts back") from stop
        if (created is not None and not isinstance(stop, OutOfGpuMemory) and not run.read_metrics()
                and not run.checkpoint_steps()):
            shutil.rmtree(created, ignore_errors=True)
        raise


