"""Work already done, keyed by each file's content hash, under the likeness home."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from engine.prep.manifest import PhotoAnalysis

# Bump when analysis changes meaning, so old cache entries are not reused.
ANALYSIS_VERSION = 1


def settings_key(**settings: object) -> str:
    """Short stable hash of the settings an artefact depends on."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class PrepCache:
    """Analyses (JSON), thumbnails (JPEG) and crops (PNG) per content hash.

    Writers in several processes may race on one file; each writes a temp file and renames it,
    so a reader sees a whole file or none.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, sha256: str, suffix: str) -> Path:
        return self.root / kind / sha256[:2] / f"{sha256}{suffix}"

    def analysis_path(self, sha256: str, key: str) -> Path:
        """Where the analysis of these bytes under these settings lives."""
        return self._path("analysis", sha256, f"-{key}.json")

    def thumb_path(self, sha256: str) -> Path:
        """Where the contact-sheet thumbnail of these bytes lives."""
        return self._path("thumbs", sha256, ".jpg")

    def crop_path(self, sha256: str, key: str) -> Path:
        """Where the training image cut from these bytes with these settings lives."""
        return self._path("crops", sha256, f"-{key}.png")

    def load_analysis(self, sha256: str, key: str) -> PhotoAnalysis | None:
        """The cached analysis, or None (absent or unreadable)."""
        try:
            return PhotoAnalysis.model_validate_json(self.analysis_path(sha256, key).read_text())
        except (OSError, ValueError):
            return None

    def save_analysis(self, analysis: PhotoAnalysis, key: str) -> None:
        """Store an analysis of bytes that hashed to `analysis.sha256`."""
        assert analysis.sha256 is not None
        write_atomically(self.analysis_path(analysis.sha256, key), analysis.model_dump_json().encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
