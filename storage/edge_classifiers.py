"""Edge classifier files: boosted trees as arrays with their feature names and provenance.

Format (version 1): a zip archive of ``.npy`` arrays, the fields of
:class:`emflow.edge_classifier.BoostedTrees`, and ``classifier.json`` with the format version, the
feature names, the trees' baseline and the training metadata. No pickle: loading runs no code, and
the file does not depend on the scikit-learn version that trained it. Members are written in a fixed
order with a fixed timestamp, so that the same classifier gives the same bytes (its SHA-256 is its
identity, recorded by the runs that use it). Written atomically.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from emflow.edge_classifier import BoostedTrees, EdgeClassifier
from emflow.errors import InputError
from emflow.targets import atomic_write_bytes

FORMAT_VERSION = 1
_HEADER = "classifier.json"
_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


def classifier_beside(model: str | Path) -> Path:
    """Where the edge classifier of a model file lives: beside it, ``<model stem>.edge_classifier.npz``
    (the shipped FIB-SEM model's is ``flyem_fib_affinities.edge_classifier.npz``; see its card)."""
    model = Path(model)
    return model.with_name(f"{model.stem}.edge_classifier.npz")


def save_edge_classifier(path: str | Path, classifier: EdgeClassifier) -> None:
    """Write ``classifier`` to ``path`` atomically (the same classifier always gives the same bytes)."""
    header = {
        "format_version": FORMAT_VERSION,
        "feature_names": list(classifier.feature_names),
        "baseline": classifier.trees.baseline,
        "metadata": classifier.metadata,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(_HEADER, _TIMESTAMP), json.dumps(header, indent=1, sort_keys=True))
        for name in BoostedTrees.ARRAYS:
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(getattr(classifier.trees, name)), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", _TIMESTAMP), member.getvalue())
    atomic_write_bytes(path, buffer.getvalue())


def load_edge_classifier(path: str | Path) -> EdgeClassifier:
    """A classifier written by :func:`save_edge_classifier`; InputError (file named) for a missing,
    damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"edge classifier file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read(_HEADER))
            if header.get("format_version") != FORMAT_VERSION:
                raise InputError(
                    f"{path}: not an emflow edge classifier of format version {FORMAT_VERSION} (found {header.get('format_version')})"
                )
            arrays = {
                name: np.lib.format.read_array(io.BytesIO(archive.read(f"{name}.npy")), allow_pickle=False) for name in BoostedTrees.ARRAYS
            }
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise InputError(f"{path}: not a readable emflow edge classifier ({error})") from None
    trees = BoostedTrees(baseline=float(header["baseline"]), **arrays)
    return EdgeClassifier(trees, tuple(header["feature_names"]), header["metadata"])
