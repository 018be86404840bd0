"""What prep records: each photo's analysis, its verdict, and the run's summary."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from engine.errors import LikenessError

MANIFEST_VERSION = 1


class Reason(StrEnum):
    """Why a photo was rejected; the value is what the manifest and the summary show."""

    UNREADABLE = "unreadable"
    NOT_A_FILE = "not a regular file"
    EMPTY = "empty file"
    FILE_TOO_LARGE = "file too large"
    NOT_AN_IMAGE = "not an image"
    CORRUPT = "truncated or corrupt"
    TOO_MANY_PIXELS = "too many pixels"
    NO_FACE = "no face"
    DIFFERENT_PERSON = "different person"
    TOO_SMALL = "too small"
    BLURRY = "blurry"
    TOO_DARK = "too dark"
    TOO_BRIGHT = "too bright"
    DUPLICATE = "duplicate"


Box = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels of the full-resolution, upright photo."""


class FaceFound(BaseModel):
    """One face in a photo, measured on the detection copy."""

    box: Box = Field(description="Face box in full-resolution pixels (left, top, right, bottom).")
    encoding: list[float] = Field(description="128-d face_recognition encoding.")
    sharpness: float = Field(description="Variance of the Laplacian of the face, resized to 128 px.")
    brightness: float = Field(description="Mean luminance of the face box, 0-255.")


class PhotoAnalysis(BaseModel):
    """Everything prep learns from one file's bytes; cached by content hash."""

    sha256: str | None = Field(default=None, description="Hash of the file's bytes; None if unreadable.")
    error: Reason | None = Field(default=None, description="Why the file could not be used as an image.")
    detail: str | None = Field(default=None, description="The error's specifics, for the manifest.")
    width: int | None = Field(default=None, description="Upright full-resolution width.")
    height: int | None = Field(default=None, description="Upright full-resolution height.")
    faces: list[FaceFound] = Field(default_factory=list, description="Faces found, largest first.")
    phash: str | None = Field(default=None, description="Perceptual hash of the whole photo (hex).")


class PhotoEntry(BaseModel):
    """One input file's line in manifest.json."""

    source: str = Field(description="Path relative to PHOTOS (or the zip member name).")
    sha256: str | None = Field(default=None, description="Hash of the source bytes.")
    status: Literal["accepted", "rejected"] = Field(description="Whether the photo is in the dataset.")
    reason: Reason | None = Field(default=None, description="Why it was rejected.")
    detail: str | None = Field(default=None, description="More about the reason (which photo it duplicates...).")
    image: str | None = Field(default=None, description="Dataset-relative path of the training image.")
    width: int | None = Field(default=None, description="Upright source width.")
    height: int | None = Field(default=None, description="Upright source height.")
    faces: int = Field(default=0, description="How many faces were found in the photo.")
    face_box: Box | None = Field(default=None, description="The kept face's box in source pixels.")
    identity_distance: float | None = Field(default=None, description="Kept face's distance to the identity.")
    sharpness: float | None = Field(default=None, description="Kept face's variance of the Laplacian.")
    brightness: float | None = Field(default=None, description="Kept face's mean luminance.")
    phash: str | None = Field(default=None, description="Perceptual hash of the photo.")
    crop_box: Box | None = Field(default=None, description="Square crop in source pixels; may overhang (padded).")
    upscale: float | None = Field(default=None, description="Enlargement from the crop to the training size.")


class Manifest(BaseModel):
    """DATASET/manifest.json: the config that made the dataset and a line per input file."""

    version: int = Field(default=MANIFEST_VERSION, description="Manifest format version.")
    photos: str = Field(description="The PHOTOS folder or zip the dataset came from.")
    size: int = Field(description="Side of every training image.")
    instance_prompt: str = Field(description="Caption of every training image.")
    config: dict = Field(description="The PrepConfig that made this dataset.")
    identity_photos: int = Field(description="Photos whose faces formed the identity.")
    identity_source: Literal["cluster", "reference"] = Field(description="How the identity was chosen.")
    accepted: int = Field(description="Training images written.")
    rejected: dict[str, int] = Field(description="Rejected photos by reason.")
    entries: list[PhotoEntry] = Field(description="Every input file, in source order.")

    def write(self, path: Path) -> None:
        """Write as indented JSON."""
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read a manifest.json written by `write`."""
        return cls.model_validate_json(path.read_text())


@dataclass(frozen=True)
class PrepProgress:
    """A progress tick: `done` of `total` photos through `stage` ("analysing", "cropping", "writing")."""

    stage: str
    done: int
    total: int


class SizeHint(BaseModel):
    """Which training size (or upscale limit) would keep the photos rejected as too small."""

    size: int = Field(description="The requested training size.")
    too_small: int = Field(description="Photos rejected as too small at that size.")
    keeps: int = Field(description="How many of them `suggested_size` would keep.")
    suggested_size: int = Field(description="The largest multiple of 64 at which they would be kept.")
    suggested_max_upscale: float | None = Field(
        default=None, description="The upscale limit that keeps them at the requested size (None: over 8x).")

    def text(self) -> str:
        """One line a user can act on, in the CLI's words."""
        line = (f"{self.too_small} photo{'s' if self.too_small != 1 else ''} too small for {self.size} px: "
                f"--size {self.suggested_size} would keep {'all ' if self.keeps == self.too_small else ''}"
                f"{self.keeps}")
        if self.suggested_max_upscale is not None:
            line += f" (or --max-upscale {self.suggested_max_upscale:g} at {self.size} px, softer images)"
        return line


def size_hint(entries: list[PhotoEntry], size: int, max_upscale: float) -> SizeHint | None:
    """A hint when "too small" is the most common reason for rejection, else None.

    A crop of side s is kept at size N when N / s <= max_upscale, so the largest N that keeps every
    too-small photo is max_upscale times the smallest crop, rounded down to a multiple of 64.
    """
    rejected = [e for e in entries if e.status == "rejected"]
    small = [e for e in rejected if e.reason == Reason.TOO_SMALL and e.upscale]
    if not small or 2 * len(small) < len(rejected):
        return None
    crops = [size / e.upscale for e in small]  # type: ignore[operator]
    suggested = max(64, int(min(crops) * max_upscale) // 64 * 64)
    keeps = sum(suggested / crop <= max_upscale + 1e-9 for crop in crops)
    needed = math.ceil(max(e.upscale for e in small) * 2) / 2  # type: ignore[type-var]
    return SizeHint(size=size, too_small=len(small), keeps=keeps, suggested_size=min(suggested, size),
                    suggested_max_upscale=needed if needed <= 8 else None)


class NothingAccepted(LikenessError):
    """Prep kept no photo: the one-line reason, with every file's verdict and the size hint for the caller."""

    def __init__(self, message: str, entries: list[PhotoEntry], hint: SizeHint | None):
        super().__init__(message + (f"; {hint.text()}" if hint else ""))
        self.entries = entries
        self.hint = hint

    def event_data(self) -> dict:
        """What a service's failed event carries, so a screen can show the table and offer the hint."""
        return {"entries": [e.model_dump(mode="json", include={"source", "status", "reason", "detail"})
                            for e in self.entries],
                "hint": self.hint.model_dump(mode="json") if self.hint else None}


class PrepReport(BaseModel):
    """What a prep run did, for printing and for callers."""

    dataset: Path = Field(description="The dataset folder written.")
    found: int = Field(description="Input files considered (videos and sidecars excluded).")
    skipped: int = Field(description="Videos, sidecars and hidden files passed over silently.")
    accepted: int = Field(description="Training images written.")
    rejected: dict[str, int] = Field(description="Rejected files by reason.")
    cached: int = Field(description="Files whose analysis came from the cache.")
    seconds: float = Field(description="Wall-clock time of the run.")
    identity_photos: int = Field(description="Photos whose faces formed the identity.")
    hint: SizeHint | None = Field(default=None, description="A size that would keep the photos rejected as too small.")

    @property
    def images_per_second(self) -> float:
        """Input files handled per second."""
        return self.found / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"found {self.found} photos ({self.skipped} videos/sidecars skipped), "
            f"{self.cached} from cache",
            f"accepted {self.accepted}, rejected {sum(self.rejected.values())}",
        ]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.rejected.items(), key=lambda kv: -kv[1])]
        if self.hint is not None:
            lines.append(f"hint: {self.hint.text()}")
        lines.append(f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/second")
        lines.append(f"dataset: {self.dataset}")
        # The picture to look at before training: every crop kept, every photo refused and why.
        lines.append(f"contact sheet: {self.dataset / 'report.png'}")
        return "\n".join(lines)
