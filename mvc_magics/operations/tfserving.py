"""TensorFlow Serving's layout: numbered SavedModel folders under one base path, and which mvc id each holds.

TF Serving watches ``PATH`` and serves the highest ``PATH/<n>/`` (a SavedModel with ``serving_default``).
``PATH/mvc_versions.json`` maps each ``n`` to the mvc version id in it, so exporting an id already
there names its folder instead of writing a copy. :func:`~mvc_magics.operations.export.export_version`
writes the SavedModel (``format="tfserving"``); this module only reads and records the layout.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from ..errors import ExportError

INDEX = "mvc_versions.json"
_MAX_INDEX_BYTES = 4 * 1024 * 1024
_ID = re.compile(r"[0-9a-f]{64}")


class ServingLayout:
    """The numbered version folders under ``base`` and the ids :data:`INDEX` records for them."""

    def __init__(self, base: str | os.PathLike) -> None:
        self.base = Path(base).expanduser()
        if self.base.exists() and (not self.base.is_dir() or self.base.is_symlink()):
            raise ExportError(f"{self.base} exists and is not a folder; a TF Serving export is a folder of versions")
        if not self.base.parent.is_dir():
            raise ExportError(f"folder {self.base.parent} does not exist")

    def recorded(self) -> dict[int, str]:
        """``n`` -> mvc id, from :data:`INDEX` (empty when there is none yet); a damaged index is refused."""
        file = self.base / INDEX
        if not file.exists():
            return {}
        if file.is_symlink() or not file.is_file() or file.stat().st_size > _MAX_INDEX_BYTES:
            raise ExportError(f"{file} is not an index written by mvc (not a small regular file)")
        try:
            data = json.loads(file.read_text())
            recorded = {int(n): vid for n, vid in data.items() if str(n).isdigit() and _ID.fullmatch(vid)}
        except (ValueError, AttributeError, TypeError):
            raise ExportError(f"{file} is not an index written by mvc; move it away to export here") from None
        if len(recorded) != len(data):
            raise ExportError(f"{file} is not an index written by mvc; move it away to export here")
        return recorded

    def folder_of(self, vid: str) -> Path | None:
        """The version folder already holding ``vid``, if any (its SavedModel still in place)."""
        for n, held in sorted(self.recorded().items()):
            if held == vid and (self.base / str(n) / "saved_model.pb").is_file():
                return self.base / str(n)
        return None

    def next_folder(self) -> Path:
        """``base/<n>`` for the next integer ``n`` (above every numbered folder and recorded one)."""
        numbers = set(self.recorded())
        if self.base.is_dir():
            numbers |= {int(p.name) for p in self.base.iterdir() if p.name.isdigit()}
        self.base.mkdir(exist_ok=True)
        return self.base / str(max(numbers, default=0) + 1)

    def record(self, folder: Path, vid: str) -> None:
        """Add ``folder``'s number -> ``vid`` to the index (written whole under a new name, then renamed)."""
        recorded = self.recorded()
        recorded[int(folder.name)] = vid
        text = json.dumps({str(n): recorded[n] for n in sorted(recorded)}, indent=1) + "\n"
        tmp = self.base / f".{INDEX}.{os.getpid()}-{uuid.uuid4().hex}"
        tmp.write_text(text)
        os.replace(tmp, self.base / INDEX)
