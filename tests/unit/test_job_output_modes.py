"""Every built-in job type that writes files gives them normal permissions:
0o666 and directories 0o777, less the umask (never the 0o600 of a temp file),
and maintenance.sync keeps each source file's own mode."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from worker.context import JobContext, JobSettings
from worker.jobs import BUILTINS

UMASK = 0o002  # neither 0o600 nor a fixed 0o644 passes for what it gives: 0o664 / 0o775


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    from PIL import Image

    r = tmp_path / "root"
    r.mkdir()
    (r / "sales.csv").write_text("region,revenue\nnorth,10\nsouth,20\n")
    (r / "site").mkdir()
    (r / "site" / "index.html").write_text("<p>hi</p>")
    (r / "site" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(r / "site" / "run.sh", 0o750)
    Image.new("RGB", (20, 20), "white").save(r / "i.png")
    old = os.umask(UMASK)
    try:
        yield r
    finally:
        os.umask(old)


WRITERS = [
    ("text.convert", {"op": "csv_to_json", "path": "sales.csv", "output": "out/a/sales.json"}),
    ("file.compress", {"path": "sales.csv", "output": "out/b/sales.csv.gz"}),
    ("image.resize", {"path": "i.png", "width": 10, "output": "out/c/r.png"}),
    ("image.convert", {"path": "i.png", "format": "jpeg", "output": "out/d/c.jpg"}),
    ("image.filter", {"path": "i.png", "filter": "grayscale", "output": "out/e/g.png"}),
    ("report.generate", {"path": "sales.csv", "output": "out/f/r.md", "label": "region"}),  # and its PNG chart
    ("report.generate", {"path": "sales.csv", "output": "out/g/r.html", "label": "region"}),
    ("archive.create", {"source": "site", "output": "out/h/site.tar.gz"}),
    ("archive.create", {"source": "site", "output": "out/i/site.zip"}),
    ("maintenance.backup", {"source": "site", "dest": "out/j"}),
]


@pytest.mark.parametrize(("job_type", "args"), WRITERS, ids=[f"{t}-{a.get('output', a.get('dest'))}"
                                                             for t, a in WRITERS])
def test_outputs_get_the_umask_modes(root: Path, job_type: str, args: dict) -> None:
    ctx = JobContext("j1", 1, {}, root.parent / "work", type=job_type, settings=JobSettings(data_root=root))
    BUILTINS[job_type][0](args, ctx)
    written = sorted((root / "out").rglob("*"))
    assert written, "the job wrote nothing"
    for path in written:
        want = 0o775 if path.is_dir() else 0o664
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


def test_decompress_and_extract_outputs_too(root: Path) -> None:
    ctx = JobContext("j1", 1, {}, root.parent / "work", type="t", settings=JobSettings(data_root=root))
    BUILTINS["file.compress"][0]({"path": "sales.csv", "output": "packed/sales.csv.gz"}, ctx)
    BUILTINS["archive.create"][0]({"source": "site", "output": "packed/site.zip"}, ctx)
    BUILTINS["file.decompress"][0]({"path": "packed/sales.csv.gz", "output": "out/sales.csv"}, ctx)
    BUILTINS["archive.extract"][0]({"path": "packed/site.zip", "target": "out/site"}, ctx)
    for path in sorted((root / "out").rglob("*")):
        want = 0o775 if path.is_dir() else 0o664
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


def test_sync_keeps_each_files_own_mode(root: Path) -> None:
    ctx = JobContext("j1", 1, {}, root.parent / "work", type="t", settings=JobSettings(data_root=root))
    BUILTINS["maintenance.sync"][0]({"source": "site", "dest": "mirror"}, ctx)
    for name in ("run.sh", "index.html"):  # 0o750 and the fixture's 0o644
        assert (root / "mirror" / name).stat().st_mode == (root / "site" / name).stat().st_mode, name
    assert stat.S_IMODE((root / "mirror" / "run.sh").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "mirror").stat().st_mode) == 0o775
