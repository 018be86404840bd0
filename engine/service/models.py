"""What the queue stores and the API speaks: jobs, their events, and the requests that make them.

A job's `config` is the very typed config the CLI builds (`TrainConfig`, `GenerateConfig`,
`PrepConfig`), stored as JSON, so a job can be run, resumed or repeated from its row alone.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.errors import LikenessError
from engine.generation.generator import GenerateConfig
from engine.placement.decision import Where, where_asked
from engine.placement.gpus import GpuName
from engine.prep.config import PrepConfig
from engine.training.config import TrainConfig

JobKind = Literal["prep", "train", "generate"]
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]

# Jobs that need the GPU run one at a time; prep runs beside them on the CPU.
GPU_KINDS: tuple[JobKind, ...] = ("train", "generate")
CPU_KINDS: tuple[JobKind, ...] = ("prep",)
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})

EventType = Literal[
    "queued",  # submitted, or resumed as a new attempt
    "running",  # a worker process took it
    "placed",  # train jobs: where this attempt runs, as placement decided: where, gpu, on, reason
    "started",  # models loaded, the loop begins: first_step, total
    "progress",  # step, total, loss, lr, seconds_per_step, eta_seconds (prep: stage too)
    "phase",  # name (loading, caching, sampling, training), index and total of a grid, fraction drawn, text
    "sample_ready",  # step, path, url, identity_score, likeness, memorisation, variety, recommended_step
    "overfitting",  # step, cause (memorisation or likeness), message: the one-line warning and what to do
    "log",  # message
    "done",  # result
    "failed",  # reason (one line), log
    "cancelled",  # reason
    "interrupted",  # reason
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a dataset or run name, or None. The one rule for submit and for reads:
    a name accepted when a job is queued is a name its folder can be read back by."""
    if not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        return f"{name[:120]!r} is not a valid name ({NAME_RULE})"
    return None


class JobProgress(BaseModel):
    """The newest progress event of a job, kept on its row for lists."""

    step: int
    total: int
    loss: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    stage: str | None = None


class Job(BaseModel):
    """One unit of work: its typed config, where it is in its life, and where its files are."""

    id: int = Field(description="Job id, increasing.")
    kind: JobKind
    state: JobState
    config: dict[str, Any] = Field(description="The typed config (TrainConfig, GenerateConfig or PrepConfig) as JSON.")
    run_dir: str | None = Field(description="Folder the job writes, relative to LIKENESS_HOME (runs/NAME, datasets/NAME).")
    attempt: int = Field(description="1 for the first run; each resume adds one.")
    created_at: str
    queued_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = Field(default=None, description="One-line reason when failed, cancelled or interrupted.")
    where: Where = Field(default="auto", description="Train jobs: where to run (auto: here if it fits, else Modal).")
    gpu: GpuName | None = Field(default=None, description="Train jobs: the Modal GPU; None lets placement choose.")
    ran_on: str | None = Field(default=None, description="Train jobs: where the newest attempt runs, once placement "
                                                         "decided ('modal (A10G)', 'local (CPU)'); None before.")
    log: str | None = Field(default=None, description="The worker's log file, relative to LIKENESS_HOME.")
    cancel_requested: bool = False
    worker_pid: int | None = Field(default=None, description="Process id of the current attempt's worker.")
    progress: JobProgress | None = None
    result: dict[str, Any] | None = Field(default=None, description="What a finished job made (LoRA, images, report).")
    last_event_id: int = Field(default=0, description="Id of the job's newest event.")
    stalled: str | None = Field(default=None, description="Running jobs: 'no progress for N s' and why (its worker "
                                                          "stopped, or silent for long); None while it progresses.")
    waiting: str | None = Field(default=None, description="Queued jobs: which running job it waits for, and whether "
                                                          "that one makes progress.")


class JobEvent(BaseModel):
    """Something that happened to a job; ids count 1, 2, 3... per job, across attempts."""

    id: int
    job_id: int
    type: EventType
    time: str
    data: dict[str, Any] = Field(default_factory=dict)


class TrainJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"]
    config: TrainConfig
    where: Where = Field(default="auto", description="auto: on this machine's GPU if the run fits, else on Modal.")
    gpu: GpuName | None = Field(default=None, description="Modal GPU to use (implies where=modal); None: the "
                                                         "cheapest that fits.")

    @model_validator(mode="after")
    def _gpu_means_modal(self) -> TrainJobRequest:
        self.where = _checked_where(self.where, self.gpu, self.config.device)
        return self


class ResumeRequest(BaseModel):
    """Where the next attempt of a train job runs; the defaults keep the job's own placement."""

    model_config = ConfigDict(extra="forbid")

    where: Where | None = Field(default=None, description="Run the next attempt here instead (modal: after an "
                                                          "out-of-memory, carry on in the cloud).")
    gpu: GpuName | None = Field(default=None, description="Modal GPU for the next attempt (implies where=modal).")

    @model_validator(mode="after")
    def _gpu_means_modal(self) -> ResumeRequest:
        if self.gpu is not None:  # the device need not be checked: a move to Modal takes the cloud's
            self.where = _checked_where(self.where or "auto", self.gpu, "auto")
        return self


def _checked_where(where: Where, gpu: str | None, device: str) -> Where:
    # The CLI's rules (engine.placement.decision.where_asked), as a validation error with the field's reason.
    try:
        return where_asked(where, gpu, device)
    except LikenessError as error:
        raise ValueError(str(error).replace("--", "")) from None


class GenerateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["generate"]
    config: GenerateConfig


class PrepJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["prep"]
    config: PrepConfig


JobRequest = Annotated[TrainJobRequest | GenerateJobRequest | PrepJobRequest, Field(discriminator="kind")]


class DatasetRequest(BaseModel):
    """Make datasets/NAME by running prep on photos the engine can see."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="The dataset's folder name under datasets/.")
    photos: str = Field(min_length=1, description="Folder or .zip of photos, inside LIKENESS_HOME (relative to it).")
    options: dict[str, Any] = Field(default_factory=dict, description="Any other PrepConfig fields (size, framing...).")

    @field_validator("name")
    @classmethod
    def _one_name_rule(cls, name: str) -> str:
        problem = name_problem(name)
        if problem:
            raise ValueError(problem)
        return name


def _damaged():
    return Field(default=None, description="Why a file of this folder cannot be read (the rest is listed as far as "
                                           "it could be read); None when nothing is damaged.")


class DatasetSummary(BaseModel):
    name: str
    photos: str = Field(default="", description="Where the photos came from.")
    size: int = Field(default=0, description="Side of the training images in pixels.")
    accepted: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    instance_prompt: str = ""
    manifest_url: str
    report_url: str | None
    damaged: str | None = _damaged()


class RunSummary(BaseModel):
    """The fields of run.json that runs are compared by."""

    name: str
    status: str | None = None
    base: str | None = None
    steps: int | None = None
    steps_done: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lr: float | None = None
    resolution: int | None = None
    dataset: str | None = Field(default=None, description="The dataset it trained on (relative to LIKENESS_HOME if inside it).")
    batch_size: int | None = None
    seed: int | None = None
    token: str | None = None
    class_word: str | None = None
    num_images: int | None = None
    final_loss: float | None = None
    identity_score_last_grid: float | None = None
    best_likeness: float | None = Field(default=None, description="Lowest median face distance of any sample grid.")
    best_likeness_step: int | None = Field(default=None, description="The sample step with the best likeness.")
    memorisation_at_best: float | None = Field(default=None, description="Memorisation (0..1) at that step.")
    recommended_step: int | None = Field(default=None, description="The step generate uses by default; none: the final LoRA.")
    recommendation: str | None = Field(default=None, description="Why that step, in one sentence.")
    wall_time_s: float | None = None
    median_seconds_per_step: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    gpu_name: str | None = None
    precision: str | None = None
    where: str | None = Field(default=None, description="local or modal.")
    cost_usd: float | None = Field(default=None, description="Cloud cost of the run (GPU seconds x price); none locally.")
    started_at: str | None = None
    finished_at: str | None = None
    lora_url: str | None = Field(default=None, description="Download of the final LoRA, once there is one.")
    latest_sample_url: str | None = None
    job_id: int | None = Field(default=None, description="The newest train job that wrote this run, if the queue has it.")
    error: str | None = Field(default=None, description="Why that job failed, was cancelled or interrupted (one line).")
    damaged: str | None = _damaged()


class SystemInfo(BaseModel):
    device: str = Field(description="cuda or cpu: where a job with device=auto runs.")
    gpu_name: str | None = None
    vram_free_mb: float | None = None
    vram_total_mb: float | None = None
    ram_available_mb: float | None = Field(
        default=None, description="RAM available now: what a run on the CPU chooses its memory savers against.")
    versions: dict[str, str | None]
    modal_configured: bool = Field(description="A Modal token is there (~/.modal.toml or MODAL_TOKEN_ID).")
    home: str = Field(description="LIKENESS_HOME on the service's side.")
