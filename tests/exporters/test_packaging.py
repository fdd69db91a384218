"""Requirements with hashes are what pip itself checks: the real pip, on one small pinned wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nbdeploy.exporters.packaging import LINUX_PLATFORM, hashed_lines, linux_arch, pinned_hashes

PIN = "h11==0.16.0"  # small, pure Python, and one of the serving pins (uvicorn's HTTP parser)


def pip_download(requirements: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                           "--only-binary=:all:", "--platform", LINUX_PLATFORM.format(arch=linux_arch()),
                           "--python-version", python, "--implementation", "cp", "-r", str(requirements),
                           "--dest", str(dest)], capture_output=True, text=True, timeout=300, check=False)


def test_pip_installs_the_hashed_wheel_and_refuses_another(tmp_path):
    (line,) = hashed_lines([PIN], pinned_hashes([PIN]))
    assert line.startswith(f"{PIN} \\\n    --hash=sha256:")
    good = tmp_path / "requirements.txt"
    good.write_text(line + "\n")
    done = pip_download(good, tmp_path / "good")
    assert done.returncode == 0, done.stderr
    digest = line.rsplit(":", 1)[1]
    bad = tmp_path / "tampered.txt"
    bad.write_text(line.replace(digest, ("0" if digest[0] != "0" else "1") + digest[1:]) + "\n")
    refused = pip_download(bad, tmp_path / "bad")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr
    assert not list((tmp_path / "bad").glob("*.whl"))
