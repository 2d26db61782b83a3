"""The README's example test, pasted into a new folder with no configuration, passes: the
pytest plugin reaches a project that only installed the bridge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_passes_in_a_new_folder(tmp_path):
    section = README.read_text().split("## Testing your own code against the devnets", 1)[1]
    (tmp_path / "test_htlc.py").write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout
