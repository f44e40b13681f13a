"""docs/configuration.md is generated from the Settings class and must stay in sync with it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field

from kpistream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/gen_config_docs.py"
PAGE = ROOT / "docs/configuration.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_is_in_sync_with_the_settings() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        "docs/configuration.md is out of date; run: python scripts/gen_config_docs.py\n"
        + result.stderr)


def test_every_setting_is_documented() -> None:
    page = PAGE.read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields
               if f"`KPISTREAM_{name.upper()}`" not in page]
    assert not missing, f"undocumented settings: {missing}"


def test_secrets_are_marked(generator: ModuleType) -> None:
    page = generator.render()
    redis_row = next(line for line in page.splitlines() if "`KPISTREAM_REDIS_URL`" in line)
    assert "secret" in redis_row


def test_a_new_setting_makes_the_check_fail(generator: ModuleType, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    class Extended(Settings):
        brand_new_knob: int = Field(3, description="A setting nobody documented yet.")

    page = tmp_path / "configuration.md"
    page.write_text(PAGE.read_text(encoding="utf-8"), encoding="utf-8")
    original = generator.render
    monkeypatch.setattr(generator, "render", lambda settings_cls=None: original(Extended))
    assert generator.main(["--check", "--output", str(page)]) == 1
    assert generator.main(["--output", str(page)]) == 0
    assert "`KPISTREAM_BRAND_NEW_KNOB`" in page.read_text(encoding="utf-8")
    assert generator.main(["--check", "--output", str(page)]) == 0


def test_a_setting_without_description_is_refused(generator: ModuleType) -> None:
    class Undocumented(Settings):
        mystery: int = 1

    with pytest.raises(SystemExit, match="mystery"):
        generator.render(Undocumented)
