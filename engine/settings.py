"""Settings read from the environment (prefix ``LIKENESS_``), built once and passed down."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "likeness"


class Settings(BaseSettings):
    """Where likeness keeps its models, datasets and runs."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Root for built models, caches and runs.")

    @property
    def models_dir(self) -> Path:
        """Models likeness builds itself (the tiny test model)."""
        return self.home / "models"

    @property
    def class_images_dir(self) -> Path:
        """Prior-preservation class images, cached per base model and class prompt."""
        return self.home / "class-images"
