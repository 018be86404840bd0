"""How `likeness serve` is set up: flags over `LIKENESS_*` environment variables over defaults."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.errors import LikenessError


class ServiceConfig(BaseSettings):
    """Where the service listens, who may talk to it, and how much an upload may hold."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to bind; anything but loopback needs a token.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    token: str | None = Field(default=None, description="Shared secret every request must carry as a Bearer token.")
    token_file: Path | None = Field(
        default=None,
        description="File holding the token; created with a random one if missing, so containers that share "
        "the data volume (engine, web, tui) share the token without it ever being typed.",
    )
    photo_roots: str = Field(
        default="",
        description="Folders beyond LIKENESS_HOME that prep may read photos from (it never writes there), "
        "separated by os.pathsep. The TUI's own local engine allows the user's home folder.",
    )
    model_roots: str = Field(
        default="",
        description="Folders beyond LIKENESS_HOME that a job's base model may be read from (diffusers folders, "
        ".safetensors files), separated by os.pathsep. Any other base must be a Hugging Face repo id or 'tiny'.",
    )
    min_free_mb: float = Field(
        default=0, ge=0,
        description="Free space to leave under LIKENESS_HOME: a training run whose checkpoints would eat into "
        "it is refused before it starts.",
    )
    max_upload_mb: float = Field(default=2048, gt=0, description="Largest photo upload, all files together, in MiB.")
    max_upload_files: int = Field(default=500, gt=0, description="Most files one photo upload may hold.")
    cancel_grace_s: float = Field(
        default=60, gt=0,
        description="A cancelled job that has not stopped at a step boundary after this long is killed "
        "(model loading has no step boundaries).",
    )
    header_timeout_s: float = Field(
        default=10, gt=0,
        description="Seconds a client has to send a request's headers; a slower one is disconnected, so slow "
        "clients cannot hold every connection.",
    )

    @property
    def photo_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(part).expanduser() for part in self.photo_roots.split(os.pathsep) if part.strip())

    @property
    def model_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(part).expanduser() for part in self.model_roots.split(os.pathsep) if part.strip())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def resolved_token(self) -> str | None:
        """LIKENESS_TOKEN, else the token file's content (made on first use)."""
        if self.token:
            return self.token
        if self.token_file is None:
            return None
        if not self.token_file.is_file():
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            # 0600 from the start: the token must never be readable by other local users, even briefly.
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        return self.token_file.read_text().strip() or None

    def checked_token(self) -> str | None:
        """The token to enforce; refuses (one line) to serve beyond loopback without one."""
        token = self.resolved_token()
        if token is None and not is_loopback(self.host):
            raise LikenessError(
                f"--host {self.host} is reachable from other machines: set LIKENESS_TOKEN (or LIKENESS_TOKEN_FILE) "
                "to a secret first, or bind to 127.0.0.1"
            )
        return token


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def read_client_token() -> str | None:
    """The token a client sends: LIKENESS_TOKEN, else the content of LIKENESS_TOKEN_FILE if it exists."""
    token = os.environ.get("LIKENESS_TOKEN")
    if token:
        return token
    path = os.environ.get("LIKENESS_TOKEN_FILE")
    if path and Path(path).is_file():
        return Path(path).read_text().strip() or None
    return None
