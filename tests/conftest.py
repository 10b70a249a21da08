"""Shared fixtures: the real EM data under ``<repo>/../shared/data``."""

import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from emflow.boundaries import boundaries_from_labels
from emflow.costs import probabilities_to_costs
from emflow.graph import FEATURE_NAMES, in_core_graph_features
from emflow.labels import relabel_consecutive

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A suite started in the background by a shell without job control (`.ci/run &`, nohup) inherits
# SIGINT ignored, and so would every emflow process a test starts: Python installs its Ctrl-C
# handler only where SIGINT is not ignored, and the tests that press Ctrl-C on emflow (test_slurm,
# test_viewer) then wait for nothing. Handled here, SIGINT is back to the default in those children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# A crop of the FlyEM medulla cube (isotropic 10 nm) small enough for fast tests.
FLYEM_CROP = np.s_[:64, :128, :128]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(f"test data folder {DATA_DIR} is missing")
    return DATA_DIR


@pytest.fixture(scope="session")
def flyem_crop(data_dir) -> dict[str, np.ndarray]:
    """raw (uint8), neuron_ids (uint32 GT) and oversegmentation (uint32) of a (64, 128, 128) crop."""
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as f:
        crop = {
            "raw": f["raw"][FLYEM_CROP],
            "neuron_ids": f["labels/neuron_ids"][FLYEM_CROP],
            "oversegmentation": f["labels/oversegmentation"][FLYEM_CROP],
        }
    # Session-wide arrays: a test that modifies them in place fails loudly.
    for array in crop.values():
        array.flags.writeable = False
    return crop


@pytest.fixture(scope="session")
def noisy_multicut_problem(flyem_crop) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(number_of_nodes, edges, edge_costs, supervoxels) of a multicut problem on the crop's real
    supervoxels; noisy boundaries make it hard enough for local search to matter."""
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    boundaries = boundaries_from_labels(flyem_crop["neuron_ids"], noise=0.6, seed=0)
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, boundaries)
    edge_costs = probabilities_to_costs(features[:, FEATURE_NAMES.index("mean")])
    for array in (edges, edge_costs, supervoxels):
        array.flags.writeable = False
    return number_of_nodes, edges, edge_costs, supervoxels


@pytest.fixture(scope="session")
def small_affinity_model(tmp_path_factory):
    """Path of a seeded, untrained affinity U-Net small enough for fast tests (1, 8, 8 downsampling).

    Equalities of block-wise and whole-volume prediction hold for any weights, trained or not.
    """
    import torch

    from emflow.model import TrainedModel
    from emflow.storage.models import save_model
    from emflow.unet import UNet3D, UNetConfig

    torch.manual_seed(0)
    offsets = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -4, 0))
    network = UNet3D(UNetConfig(out_channels=len(offsets), depth=3, width=4, pooling=((1, 2, 2), (1, 2, 2)), two_d_levels=1))
    model = TrainedModel(
        network=network.eval(), target="affinities", offsets=offsets, input_mean=0.5, input_std=0.2, patch_shape=(16, 32, 32)
    )
    path = tmp_path_factory.mktemp("models") / "small_affinities.pt"
    save_model(path, model)
    return path


@pytest.fixture(scope="session")
def workflow_inputs(tmp_path_factory, flyem_crop) -> Path:
    """The crop as an input zarr group (raw, groundtruth, oversegmentation, GT-derived boundaries),
    for tests that only read it."""
    from workflow_helpers import write_inputs

    return write_inputs(tmp_path_factory.mktemp("workflow_inputs"), flyem_crop)


@pytest.fixture(scope="session")
def reference_segmentation(tmp_path_factory, workflow_inputs) -> np.ndarray:
    """The segmentation of the default test config (8 blocks) on `workflow_inputs`, run with the
    local scheduler and one worker: what every other way of running it must reproduce bitwise."""
    from workflow_helpers import read, run_cli, write_config

    folder = tmp_path_factory.mktemp("reference")
    assert run_cli("run", write_config(folder / "config.toml", workflow_inputs, folder / "out.zarr")) == 0
    return read(folder / "out.zarr", "segmentation")
