"""A worker's data directory holds its on-disk customer store: one worker per directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpistream.cli import claim_data_dir
from kpistream.exceptions import ConfigurationError


def test_a_second_worker_on_the_same_data_dir_is_refused_until_the_first_exits(
        tmp_path: Path) -> None:
    first = claim_data_dir(str(tmp_path / "w"))  # created if missing
    with pytest.raises(ConfigurationError, match="in use by another worker"):
        claim_data_dir(str(tmp_path / "w"))
    other = claim_data_dir(str(tmp_path / "w2"))  # another directory is fine
    first.close()  # the first worker exited
    claim_data_dir(str(tmp_path / "w")).close()
    other.close()
