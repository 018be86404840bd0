"""What `prepare_photos` needs to know, built once from the CLI, the service or the TUI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Framing = Literal["face", "head-and-shoulders"]

# Face width as a fraction of the square crop, and where the crop's centre sits relative to the
# face box's centre (in face heights; negative is up). A face crop leaves room for hair above the
# brows; head-and-shoulders drops the centre so the shoulders come in below the chin.
FRAMING_FACE_FRACTION: dict[str, float] = {"face": 0.4, "head-and-shoulders": 0.25}
FRAMING_VERTICAL_OFFSET: dict[str, float] = {"face": -0.1, "head-and-shoulders": 0.45}


class PrepConfig(BaseModel):
    """Everything that decides which photos make the dataset and how they are cropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    photos: Path = Field(description="Folder (searched recursively) or .zip export holding the photos.")
    out: Path = Field(description="Dataset folder to create: images/, manifest.json, identity.json, report.png.")
    force: bool = Field(default=False, description="Replace OUT if it exists and is not empty.")
    reference: Path | None = Field(
        default=None,
        description="Photo or folder of photos of the person to keep; overrides the most-photographed guess.",
    )
    size: int = Field(default=1024, ge=64, le=4096, strict=True, description="Side of the square training images in pixels.")
    framing: Framing = Field(default="face", description="How much of the person each crop shows.")
    face_fraction: float | None = Field(
        default=None,
        gt=0.05,
        le=0.9,
        description="Face width as a fraction of the crop; None takes the framing's default (0.4 / 0.25).",
    )
    max_upscale: float = Field(
        default=2.0, ge=1.0, le=8.0, description="Reject a face whose crop would need more enlargement than this."
    )
    max_identity_distance: float = Field(
        default=0.6,
        gt=0.0,
        le=2.0,
        description="Faces farther than this from the identity's centroid are a different person.",
    )
    min_sharpness: float = Field(
        default=40.0, ge=0.0, le=1e6, description="Reject a face whose variance of the Laplacian is below this (blurry)."
    )
    min_brightness: float = Field(
        default=45.0, ge=0.0, le=255.0, description="Reject a face whose mean brightness (0-255) is below this."
    )
    max_brightness: float = Field(
        default=225.0, ge=0.0, le=255.0, description="Reject a face whose mean brightness (0-255) is above this."
    )
    duplicate_distance: int = Field(
        default=6,
        ge=-1,
        le=64,
        strict=True,
        description="A photo within this many bits (perceptual hash) of a sharper kept one is its near-duplicate; "
        "-1 keeps all.",
    )
    detect_size: int = Field(
        default=1280,
        ge=256,
        le=8192,
        strict=True,
        description="Longest side of the copy faces are searched in (JPEGs: the DCT scale at or above 3/4 of it); larger finds smaller faces, slower.",
    )
    detector: Literal["auto", "hog", "cnn"] = Field(
        default="auto", description="Face detector: HOG on the CPU, CNN (dlib with CUDA); auto picks CNN when it can."
    )
    max_pixels: int = Field(
        default=120_000_000, ge=1, le=2**31, strict=True, description="Reject images with more pixels than this (decompression bombs)."
    )
    caption: bool = Field(default=False, description="Write images/NNNN.txt holding the instance prompt.")
    token: str = Field(default="sks", min_length=1, description="Rare token that names the person in prompts.")
    class_word: str = Field(default="person", min_length=1, description="Class noun that follows the token.")
    workers: int | None = Field(
        default=None, ge=1, le=256, strict=True, description="Processes analysing photos; None uses every core."
    )

    @model_validator(mode="after")
    def _brightness_range(self) -> PrepConfig:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self

    @property
    def crop_face_fraction(self) -> float:
        """Face width as a fraction of the crop, after the framing's default is applied."""
        return self.face_fraction if self.face_fraction is not None else FRAMING_FACE_FRACTION[self.framing]

    @property
    def crop_vertical_offset(self) -> float:
        """Shift of the crop centre from the face centre, in face heights (negative is up)."""
        return FRAMING_VERTICAL_OFFSET[self.framing]

    @property
    def instance_prompt(self) -> str:
        """The caption every training image gets."""
        return f"a photo of {self.token} {self.class_word}"
