"""The README's "Use" section as a newcomer copies it: its import command and its minimal config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import h5py
import numpy as np
from workflow_helpers import read, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _use_section() -> tuple[list[str], str]:
    """The commands of the README's "Use" block (comments dropped) and its minimal TOML config."""
    text = README.read_text()
    commands = re.search(r"^## Use\n\n```bash\n(.*?)```", text, re.DOTALL | re.MULTILINE).group(1)
    config = re.search(r"```toml\n(\[input\].*?)```", text, re.DOTALL).group(1)
    return [line.split(" #")[0].strip() for line in commands.splitlines()], config


def test_the_readme_import_command_and_minimal_config_go_together(tmp_path, monkeypatch, flyem_crop, capsys):
    """On a crop of the shared FlyEM cube, as the README names it (volume.h5 with raw at 10 nm)."""
    commands, config = _use_section()
    with h5py.File(tmp_path / "volume.h5", "w") as volume:
        volume["raw"] = flyem_crop["raw"]
        volume["raw"].attrs["resolution_nm_zyx"] = [10, 10, 10]
        volume["labels/neuron_ids"] = flyem_crop["neuron_ids"]
    (tmp_path / "my.toml").write_text(config)
    monkeypatch.chdir(tmp_path)
    hdf5_import = next(command for command in commands if command.startswith("emflow import volume.h5"))
    assert run_cli(*shlex.split(hdf5_import)[1:]) == 0
    assert np.array_equal(read(tmp_path / "data.zarr", "raw"), flyem_crop["raw"])
    # The config validates against what the import wrote: every stage is there to run.
    status = next(command for command in commands if command.startswith("emflow status"))
    capsys.readouterr()
    assert run_cli(*shlex.split(status)[1:]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["stage", "done", "stale", "failed", "pending", "total"]
    assert [line.split()[0] for line in table[1:3]] == ["prepare_output", "predict"]
    assert all(line.split()[1] == "0" and line.split()[4] == line.split()[5] for line in table[1:])
