"""The shipped systemd units are checked by systemd's own parser (``systemd-analyze verify``).

The units name ``/opt/cityid/bin/cityid``; the check points them at this checkout's
``cityid`` instead (verify refuses a missing binary) and asks for no warning at all:
an unknown or misspelt directive is only a warning to systemd, and a silent no-op in
production.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
CITYID = Path(sys.executable).parent / "cityid"


def test_every_component_has_a_unit() -> None:
    names = {u.name for u in UNITS}
    for unit in ("registrar", "witness", "resolver", "dns"):
        assert f"cityid-{unit}@.service" in names
    readme = (REPO / "deploy" / "README.md").read_text()
    assert all(u.name in readme for u in UNITS)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_unit_raises_its_file_descriptor_limit(unit: Path) -> None:
    """Every client connection is a descriptor; systemd's default soft limit is 1024."""
    limits = [ln for ln in unit.read_text().splitlines() if ln.startswith("LimitNOFILE=")]
    assert len(limits) == 1 and int(limits[0].split("=", 1)[1]) >= 65536, limits


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies_without_warnings(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    assert "/opt/cityid/bin/cityid " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/cityid/bin/cityid", str(CITYID)))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
