"""The package as a user gets it: light to import, and a wheel that carries its prompt templates."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_import_does_not_pull_heavy_dependencies() -> None:
    heavy = "{'torch', 'transformers', 'outlines', 'openai', 'typer', 'rich', 'PIL', 'numpy', 'av'}"
    code = f"import sys, flexjudge; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bundled_templates_load() -> None:
    from flexjudge.prompts import load_template, template_names

    assert {"flex_image", "flex_video", "native_pair", "native_point"} <= set(template_names())
    assert "{prompt}" in load_template("flex_image")
    with pytest.raises(FileNotFoundError, match="bundled"):
        load_template("no_such_template")


def test_wheel_installs_in_a_fresh_venv_and_ships_prompts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("flexjudge-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    code = (
        "import flexjudge, flexjudge.prompts as p, pathlib;"
        "assert 'site-packages' in flexjudge.__file__;"
        "print(p.load_template('flex_image')[:40]); print(pathlib.Path(p._directory()))"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "site-packages" in out.splitlines()[-1]
    cli = subprocess.run(
        [str(env_dir / "bin" / "flexjudge"), "--help"], capture_output=True, text=True, check=True
    )
    assert "validate" in cli.stdout
