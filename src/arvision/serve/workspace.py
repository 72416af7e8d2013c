"""Per-request folders for the files a page offers (grids, tokens, edits), removed when they are old.

Gradio copies every file a handler returns into its own cache (which ``Blocks(delete_cache=...)`` empties); these
folders only need to live until then, so each new request removes those older than ``max_age_s``, and the whole
tree goes when the server stops.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path


class Workspace:
    def __init__(self, max_age_s: float = 3600.0):
        self.root = Path(tempfile.mkdtemp(prefix="arvision-serve-"))  # under the temp dir Gradio may serve from
        self.max_age_s = max_age_s

    def new(self) -> Path:
        """A fresh folder for one request (old ones removed first)."""
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:  # another request removed it first
                pass
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
