"""Versions of the libraries a run used, for run.json and image sidecars."""

from importlib import metadata

_LIBRARIES = ("likeness", "torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "xformers")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
