"""Random augmentation of (raw, labels) training patches for boundary/affinity networks.

A 3D U-Net that predicts boundaries or affinities from serial-section EM
sees only a few labelled cubes; augmentation makes it invariant to the
variations that those cubes under-represent. The set follows Lee et al.
2017, "Superhuman accuracy on the SNEMI3D connectomics challenge"
(arXiv:1706.00120), who found the simulated section defects the main
reason their network stayed robust on real serial-section stacks:

* **Flips and transposes** (raw and labels): the tissue has no preferred
  orientation, so each of the three axes is flipped with probability 0.5
  and y and x are swapped with probability 0.5. The swap stays in-plane
  because z is usually sampled more coarsely than y and x (anisotropy),
  and it is skipped when the patch is not square in (y, x).
* **Elastic deformation** (raw and labels): simulates the smooth
  non-linear distortions of cutting and imaging and the natural variation
  of neurite shapes. The displacement is in-plane (y and x only) and one
  field is shared by all sections, so the sections stay registered to
  each other; section-to-section jumps are the job of the misalignment
  augmentation.
* **Intensity** (raw only): contrast, brightness and gamma vary between
  sections, samples and microscopes.
* **Misalignment** (raw and labels): a translation jump between two
  consecutive sections, left over by imperfect registration. The labels
  move with the raw data because the jump is a real displacement of the
  tissue in the image, and the network has to learn to connect across it.
* **Blur** (raw only): out-of-focus sections.
* **Missing sections** (raw only): lost or unusable sections replaced by
  a constant. The labels keep the true geometry so that the network
  learns to bridge the gap from its neighbouring sections.

Arrays are ``(z, y, x)``; all distances are in voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["augment"]


def augment(
    raw: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    transpose: bool = True,
    intensity: float = 0.1,
    gamma: float = 0.2,
    elastic_probability: float = 0.5,
    elastic_magnitude: float = 2.0,
    elastic_sigma: float = 8.0,
    missing_section_probability: float = 0.0,
    misalignment_probability: float = 0.0,
    misalignment_max_shift: int = 4,
    blur_probability: float = 0.0,
    blur_sigma: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augmented copies of a raw patch and its instance labels.

    Parameters
    ----------
    raw:
        ``float32`` (or ``float64``) EM intensities of shape
        ``(z, y, x)`` with values in [0, 1].
    labels:
        Integer instance ids of the same shape; 0 is background/boundary.
    rng:
        Source of all randomness; the result is a pure function of the
        inputs and the generator's state.
    flip:
        Flip each of the three axes with probability 0.5.
    transpose:
        Swap y and x with probability 0.5 (only when they have equal size).
    intensity:
        Contrast factor ``1 + U(-intensity, intensity)`` and brightness
        shift ``U(-intensity, intensity)``: ``raw * contrast + brightness``.
    gamma:
        Gamma exponent ``exp(U(-gamma, gamma))``: ``raw ** exponent``.
    elastic_probability:
        Probability of an elastic deformation of the patch.
    elastic_magnitude:
        Standard deviation of each in-plane displacement component, voxels.
    elastic_sigma:
        Smoothness of the displacement field: sigma of the Gaussian that
        smooths white noise into the field, voxels.
    missing_section_probability:
        Per-section probability of replacing the section by the mean of the
        patch (raw only).
    misalignment_probability:
        Probability of one translation jump: the sections from a random
        ``z`` in ``1 .. z-1`` on are shifted by a random non-zero integer
        ``(dy, dx)`` with ``|dy|, |dx| <= misalignment_max_shift``, in raw
        and labels alike. Voxels uncovered by the shift repeat the nearest
        edge voxel in raw (no artificial black border for the network to
        key on) and get label 0 in labels (no tissue was imaged there, so
        no instance may claim it). Patches with fewer than 2 sections or a
        maximum shift of 0 are left unshifted.
    misalignment_max_shift:
        Largest shift per in-plane axis, voxels.
    blur_probability:
        Per-section probability of a 2D Gaussian blur (raw only).
    blur_sigma:
        Sigma of that blur, voxels.

    Returns
    -------
    New ``(raw, labels)`` arrays with the shapes and dtypes of the inputs;
    raw stays in [0, 1] and labels contain only ids present in the input.
    The inputs are never modified.

    The augmentations run in this order, each drawing from ``rng`` only
    when enabled: flips, transpose, elastic deformation, misalignment,
    intensity, blur, missing sections. Missing sections come last so that
    they end up exactly constant.
    """
    raw = np.asarray(raw)
    labels = np.asarray(labels)
    _validate(
        raw,
        labels,
        rng,
        probabilities={
            "elastic_probability": elastic_probability,
            "missing_section_probability": missing_section_probability,
            "misalignment_probability": misalignment_probability,
            "blur_probability": blur_probability,
        },
        strengths={
            "intensity": intensity,
            "gamma": gamma,
            "elastic_magnitude": elastic_magnitude,
            "elastic_sigma": elastic_sigma,
            "blur_sigma": blur_sigma,
        },
        misalignment_max_shift=misalignment_max_shift,
    )

    # Views until the first augmentation that has to compute new values.
    if flip:
        for axis in range(3):
            if rng.random() < 0.5:
                raw = np.flip(raw, axis)
                labels = np.flip(labels, axis)
    if transpose and raw.shape[1] == raw.shape[2] and rng.random() < 0.5:
        raw = raw.swapaxes(1, 2)
        labels = labels.swapaxes(1, 2)

    if elastic_probability > 0 and elastic_magnitude > 0 and rng.random() < elastic_probability:
        raw, labels = _deform_elastically(raw, labels, rng, elastic_magnitude, elastic_sigma)

    if misalignment_probability > 0 and rng.random() < misalignment_probability:
        raw, labels = _misalign(raw, labels, rng, int(misalignment_max_shift))

    # From here on only raw changes; work on a private float copy of it.
    raw = np.array(raw, dtype=raw.dtype, order="C", copy=True)
    if intensity > 0:
        contrast = 1.0 + rng.uniform(-intensity, intensity)
        brightness = rng.uniform(-intensity, intensity)
        raw *= raw.dtype.type(contrast)
        raw += raw.dtype.type(brightness)
        # Clipped before the gamma as well: a negative base has no real power.
        np.clip(raw, 0.0, 1.0, out=raw)
    if gamma > 0:
        exponent = np.exp(rng.uniform(-gamma, gamma))
        np.power(raw, raw.dtype.type(exponent), out=raw)

    if blur_probability > 0 and blur_sigma > 0:
        # len(raw) here and below: with raw.shape[0] (Any in numpy's stubs) mypy picks random()'s scalar overload.
        for section in np.flatnonzero(rng.random(len(raw)) < blur_probability):
            ndimage.gaussian_filter(raw[section], blur_sigma, mode="reflect", output=raw[section])

    if missing_section_probability > 0:
        missing = rng.random(len(raw)) < missing_section_probability
        if missing.any():
            raw[missing] = raw.mean()

    # Linear interpolation and the float arithmetic above may step a rounding error outside [0, 1].
    np.clip(raw, 0.0, 1.0, out=raw)
    labels = np.array(labels, order="C", copy=True)
    return raw, labels


def _validate(raw, labels, rng, *, probabilities, strengths, misalignment_max_shift) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if raw.ndim != 3:
        raise ValueError(f"raw must be 3D (z, y, x), got shape {raw.shape}")
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    if raw.shape != labels.shape:
        raise ValueError(f"raw and labels must have the same shape, got {raw.shape} and {labels.shape}")
    if raw.size == 0:
        raise ValueError(f"raw and labels must not be empty, got shape {raw.shape}")
    # scipy.ndimage filters and interpolates only these floating-point types.
    if raw.dtype not in (np.float32, np.float64):
        raise TypeError(f"raw must be float32 or float64, got {raw.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    # Written so that NaN fails the check too.
    if not (raw.min() >= 0 and raw.max() <= 1):
        raise ValueError(f"raw must have values in [0, 1], got range [{raw.min()}, {raw.max()}]")
    for name, value in probabilities.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    for name, value in strengths.items():
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {value}")
    if isinstance(misalignment_max_shift, bool) or not isinstance(misalignment_max_shift, (int, np.integer)) or misalignment_max_shift < 0:
        raise ValueError(f"misalignment_max_shift must be a non-negative integer, got {misalignment_max_shift!r}")


def _deform_elastically(raw, labels, rng, magnitude: float, sigma: float):
    """Warp every section with the same smooth random in-plane displacement field."""
    plane_shape = raw.shape[1:]
    sample_coordinates = np.indices(plane_shape, dtype=np.float64)
    for axis_coordinates in sample_coordinates:
        displacement = ndimage.gaussian_filter(rng.standard_normal(plane_shape), sigma, mode="reflect")
        spread = displacement.std()
        # A single-pixel plane (or sigma 0 on one) has no spread to rescale; leave it unmoved.
        if spread > 0:
            axis_coordinates += displacement * (magnitude / spread)

    # Per-section 2D interpolation: about twice as fast as one 3D call with a constant z coordinate.
    deformed_raw = np.empty(raw.shape, dtype=raw.dtype)
    for section in range(raw.shape[0]):
        ndimage.map_coordinates(raw[section], sample_coordinates, output=deformed_raw[section], order=1, mode="reflect")

    # Nearest-neighbour lookup by integer indexing rather than map_coordinates(order=0): ids never
    # pass through float64, so ids above 2**53 survive too. The rounding and the half-sample
    # reflection at the border are those of map_coordinates(mode="reflect").
    nearest_y, nearest_x = (
        _reflect_index(np.rint(axis_coordinates).astype(np.intp), size) for axis_coordinates, size in zip(sample_coordinates, plane_shape)
    )
    deformed_labels = labels[:, nearest_y, nearest_x]
    return deformed_raw, deformed_labels


def _reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map integer indices outside ``[0, size)`` back inside by half-sample reflection (d c b a | a b c d)."""
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)


def _misalign(raw, labels, rng, max_shift: int):
    """Translate all sections from a random z on by a random non-zero in-plane integer shift."""
    depth, height, width = raw.shape
    if depth < 2 or max_shift == 0:
        return raw, labels
    first_shifted = int(rng.integers(1, depth))
    shift: tuple[int, ...] = (0, 0)
    # A zero shift would be no misalignment at all; redraw (at most a few times in expectation).
    while shift == (0, 0):
        shift = tuple(int(value) for value in rng.integers(-max_shift, max_shift + 1, size=2))
    shift_y, shift_x = shift

    # raw: output (y, x) shows input (y - dy, x - dx), clamped to the edge.
    source_y = np.clip(np.arange(height) - shift_y, 0, height - 1)
    source_x = np.clip(np.arange(width) - shift_x, 0, width - 1)
    shifted_raw = np.array(raw, order="C", copy=True)
    shifted_raw[first_shifted:] = raw[first_shifted:][:, source_y][:, :, source_x]

    # labels: the same translation, with label 0 where the shift uncovers the border.
    shifted_labels = np.array(labels, order="C", copy=True)
    inside = np.zeros((height, width), dtype=bool)
    inside[
        max(shift_y, 0) : height + min(shift_y, 0),
        max(shift_x, 0) : width + min(shift_x, 0),
    ] = True
    moved = labels[first_shifted:][:, source_y][:, :, source_x]
    shifted_labels[first_shifted:] = np.where(inside, moved, 0)
    return shifted_raw, shifted_labels
