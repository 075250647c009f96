"""Outputs appear whole or not at all, and a place that cannot take them is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from layercut.errors import LayercutError
from layercut.io import atomic_dir, atomic_file, check_out

UNWRITABLE = Path("/proc/layercut-no-such-folder/out")  # /proc takes no new files, even for root


@pytest.mark.parametrize("helper", [atomic_dir, atomic_file])
def test_an_unwritable_parent_is_a_layercut_error_naming_the_fix(helper):
    with pytest.raises(LayercutError, match="cannot write .*choose an --out in a folder you can write"):
        with helper(UNWRITABLE):
            raise AssertionError("the block must not run")


def test_check_out_refuses_an_existing_output_and_a_path_through_a_file(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(LayercutError, match="already exists"):
        check_out(tmp_path / "exists")
    assert check_out(tmp_path / "exists", overwrite=True) == tmp_path / "exists"
    (tmp_path / "f").write_text("")
    with pytest.raises(LayercutError, match="not a folder"):
        check_out(tmp_path / "f" / "deeper" / "out")
    assert check_out(tmp_path / "new" / "deeper" / "out") == tmp_path / "new" / "deeper" / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "f"], "a check leaves nothing behind"


def test_a_failed_block_leaves_nothing_and_a_good_one_renames(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "whole").write_text("x")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["whole"]
