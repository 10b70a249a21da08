"""Chaos: one run's output lives through kills at random writes, a full file system, deleted output
chunks and partial results, garbled global arrays and garbage journal lines, in a seeded random
order; the run that finally completes must equal an uninterrupted run bitwise, and `emflow verify`
must find every output file as written.

The full file system is a small tmpfs the output lives on, which only root can mount: run as
another user, the test keeps the other kinds of chaos and says (a warning in pytest's summary) that
it leaves that one out.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_crash_safety import RESULT_ARRAYS, KillPoint, run_to_end
from workflow_helpers import read, run_cli, write_config, write_inputs

# Kill points are drawn among a run's first writes: an uninterrupted run of the test config makes
# about 130, a run resuming after damage tens; a draw beyond a run's writes lets it finish.
WRITES = 60


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop) -> Path:
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("reference")
    assert run_cli("run", write_config(folder / "config.toml", inputs, folder / "out.zarr")) == 0
    return {key: read(folder / "out.zarr", key) for key in RESULT_ARRAYS}


def _mount_tmpfs(folder: Path) -> bool:
    """A tmpfs at `folder` if this process may mount one; False (said in a warning) if not."""
    folder.mkdir()
    if os.geteuid() != 0:
        warnings.warn("test_chaos: not root, so no small tmpfs: the full file system is left out of the chaos", stacklevel=2)
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode:
        warnings.warn(
            f"test_chaos: cannot mount a tmpfs ({mounted.stderr.strip()}): the full file system is left out of the chaos", stacklevel=2
        )
    return mounted.returncode == 0


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(path for path in folder.glob(pattern) if path.is_file() and not path.name.startswith(".")) if folder.exists() else []


def _kill_at_a_random_write(config: Path, generator: random.Random, trace: Path) -> str:
    occurrence, moment, workers = generator.randrange(1, WRITES), generator.choice(("before", "torn", "after")), generator.choice((1, 2))
    code, output = run_to_end(config, workers=workers, kill_point=KillPoint("", occurrence, moment, trace))
    assert code in (0, -signal.SIGKILL), f"a run to be killed at write {occurrence} failed (exit {code}):\n{output}"
    return f"killed {moment} write {occurrence} with {workers} workers (exit {code})"


def _damage(folder: Path, generator: random.Random) -> str:
    output, work = folder / "out.zarr", folder / "out.zarr.work"
    done = []
    chunks = [path for path in _files(output, "**/c/**/*") if "/graph/" not in str(path) or generator.random() < 0.5]
    for path in generator.sample(chunks, min(len(chunks), generator.randrange(1, 4))):
        path.unlink()
        done.append(f"deleted {path.relative_to(folder)}")
    partials = _files(work / "blocks", "*/*")
    for path in generator.sample(partials, min(len(partials), generator.randrange(0, 3))):
        path.unlink()
        done.append(f"deleted {path.relative_to(folder)}")
    bundles = _files(work / "global", "*/*.npy")
    if bundles and generator.random() < 0.5:
        path = generator.choice(bundles)
        path.write_bytes(bytes(generator.randrange(256) for _ in range(40)))
        done.append(f"garbled {path.relative_to(folder)}")
    journals = _files(work / "status", "*/*.jsonl")
    for path in generator.sample(journals, min(len(journals), 2)):
        with open(path, "ab") as handle:
            handle.write(
                generator.choice(
                    [
                        b'{"block_id": 1e400, "fingerprint": null, "finished": 0, "result": {}}\n',
                        b"\x00" * 30 + b"\n",
                        b'{"block_id": 3, "seq',
                    ]
                )
            )
        done.append(f"garbage in {path.relative_to(folder)}")
    return "; ".join(done)


def _fill_up(folder: Path, config: Path) -> str:
    """Shrink the tmpfs to what it holds plus a little, run (it stops on a full disk, or fits), grow it back."""
    used = int(subprocess.run(["df", "--output=used", "-k", str(folder)], capture_output=True, text=True, check=True).stdout.split()[-1])
    subprocess.run(["mount", "-o", f"remount,size={used + 48}k", str(folder)], check=True)
    try:
        code, output = run_to_end(config, workers=2)
    finally:
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    assert code in (0, 74), f"a run on a full file system ended with exit {code}:\n{output}"
    if code == 74:
        errors = [line for line in output.splitlines() if line.startswith("emflow: error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "Logging error" not in output, output[-3000:]
    return f"full file system: exit {code}"


@pytest.mark.parametrize("seed", range(2), ids=lambda seed: f"seed{seed}")
def test_a_run_through_chaos_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, inputs, reference, seed):
    generator = random.Random(seed)
    folder = tmp_path / "fs"
    tmpfs = _mount_tmpfs(folder)
    history = []
    try:
        # The config, and so the runs' own logs, beside the file system, not on it.
        config = write_config(tmp_path / "config.toml", inputs, folder / "out.zarr")
        for round_ in range(5):
            actions = ["kill", "damage"] + (["fill"] if tmpfs else [])
            generator.shuffle(actions)
            for action in actions:
                if action == "kill":
                    history.append(_kill_at_a_random_write(config, generator, tmp_path / f"trace-{round_}.txt"))
                elif action == "damage":
                    history.append(_damage(folder, generator))
                else:
                    history.append(_fill_up(folder, config))
        code, output = run_to_end(config, workers=generator.choice((1, 2)))
        assert code == 0, f"the final run failed (exit {code}) after: {history}\n{output}"
        for key, expected in reference.items():
            actual = read(folder / "out.zarr", key)
            assert actual.tobytes() == expected.tobytes(), f"{key} differs from an uninterrupted run's after: {history}"
        assert run_cli("verify", config) == 0, f"verify found damage after: {history}"
    finally:
        if tmpfs:
            subprocess.run(["umount", "-l", str(folder)], check=False)
