"""The ``keys`` command lists exactly the tensors of the released files (spec ``lance-keys-*.tsv``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lance_model.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def _spec_rows(spec_dir: Path, variant: str) -> list[str]:
    rows = (spec_dir / f"lance-keys-{variant}.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["name", "shape"]
    return ["\t".join(row.split("\t")[:2]) for row in rows[1:]]


@pytest.mark.parametrize("variant", ["image", "video", "vit", "vae"])
def test_keys_equal_spec_table(variant, spec_dir, capsys):
    assert main(["keys", "--variant", variant]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = _spec_rows(spec_dir, variant)
    assert len(printed) == len(set(printed))
    assert sorted(printed) == sorted(expected)


def test_python_dash_m_prints_keys(spec_dir):
    result = subprocess.run([sys.executable, "-m", "lance_model", "keys", "--variant", "vit"], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(_spec_rows(spec_dir, "vit"))


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["keys", "--variant", "audio"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'audio'" in capsys.readouterr().err
