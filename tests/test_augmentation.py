import itertools

import numpy as np
import pytest

from emflow.augmentation import augment

# Everything off: the baseline that single augmentations are switched on against.
NOTHING = dict(
    flip=False,
    transpose=False,
    intensity=0.0,
    gamma=0.0,
    elastic_probability=0.0,
    missing_section_probability=0.0,
    misalignment_probability=0.0,
    blur_probability=0.0,
)
EVERYTHING = dict(
    elastic_probability=1.0,
    missing_section_probability=0.2,
    misalignment_probability=1.0,
    blur_probability=0.2,
)


@pytest.fixture(scope="module")
def patch(flyem_crop):
    """Read-only float raw in [0, 1] and uint32 ids of a (16, 64, 64) piece of the real crop."""
    raw = (flyem_crop["raw"][:16, :64, :64] / np.float32(255)).astype(np.float32)
    labels = np.ascontiguousarray(flyem_crop["neuron_ids"][:16, :64, :64])
    for array in (raw, labels):
        array.flags.writeable = False
    return raw, labels


def _boundary_mask(labels, axes=(0, 1, 2)):
    """Voxels with a differing neighbour along one of ``axes``, or unlabeled."""
    boundary = labels == 0
    for axis in axes:
        differs = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        boundary[tuple(lower)] |= differs
        boundary[tuple(upper)] |= differs
    return boundary


def _gradient_energy(image):
    return sum(np.square(np.diff(image.astype(np.float64), axis=axis)).sum() for axis in range(image.ndim))


def test_same_seed_same_result_different_seed_different_result(patch):
    raw, labels = patch
    first = augment(raw, labels, np.random.default_rng(7), **EVERYTHING)
    again = augment(raw, labels, np.random.default_rng(7), **EVERYTHING)
    other = augment(raw, labels, np.random.default_rng(8), **EVERYTHING)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("raw_dtype, label_dtype", [(np.float32, np.uint32), (np.float64, np.int64)])
def test_inputs_untouched_and_shape_dtype_range_kept(patch, raw_dtype, label_dtype):
    raw = patch[0].astype(raw_dtype)
    labels = patch[1].astype(label_dtype)
    raw_before, labels_before = raw.copy(), labels.copy()
    for seed in range(5):
        augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(seed), intensity=0.5, gamma=0.5, **EVERYTHING)
        assert augmented_raw.shape == raw.shape and augmented_raw.dtype == raw_dtype
        assert augmented_labels.shape == labels.shape and augmented_labels.dtype == label_dtype
        assert augmented_raw.min() >= 0 and augmented_raw.max() <= 1
        assert np.isin(augmented_labels, labels).all()
        assert not np.shares_memory(augmented_raw, raw) and not np.shares_memory(augmented_labels, labels)
    np.testing.assert_array_equal(raw, raw_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_read_only_inputs_are_accepted(patch):
    # The fixture arrays are read-only: an in-place write into an input would raise here.
    augmented_raw, augmented_labels = augment(*patch, np.random.default_rng(0), intensity=0.5, **EVERYTHING)
    assert augmented_raw.flags.writeable and augmented_labels.flags.writeable


def test_everything_off_returns_exact_copies(patch):
    raw, labels = patch
    augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(0), **NOTHING)
    np.testing.assert_array_equal(augmented_raw, raw)
    np.testing.assert_array_equal(augmented_labels, labels)
    # Strength zero switches an augmentation off even at probability 1.
    augmented_raw, augmented_labels = augment(
        raw,
        labels,
        np.random.default_rng(0),
        **{**NOTHING, "elastic_probability": 1.0, "blur_probability": 1.0},
        elastic_magnitude=0.0,
        blur_sigma=0.0,
    )
    np.testing.assert_array_equal(augmented_raw, raw)
    np.testing.assert_array_equal(augmented_labels, labels)


def _flip_transpose(volume, flips, swap):
    for axis, flipped in enumerate(flips):
        if flipped:
            volume = np.flip(volume, axis)
    return volume.swapaxes(1, 2) if swap else volume


def test_flips_and_transposes_move_raw_and_labels_identically(patch):
    raw, labels = patch
    candidates = list(itertools.product(itertools.product((False, True), repeat=3), (False, True)))
    seen = set()
    for seed in range(32):
        augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(seed), **{**NOTHING, "flip": True, "transpose": True})
        # The real labels have no symmetry, so exactly one flip/transpose combination explains them.
        matches = [(flips, swap) for flips, swap in candidates if np.array_equal(_flip_transpose(labels, flips, swap), augmented_labels)]
        assert len(matches) == 1
        flips, swap = matches[0]
        np.testing.assert_array_equal(_flip_transpose(raw, flips, swap), augmented_raw)
        seen.add(matches[0])
    # Every axis is flipped in some draws and not in others, and so is the transpose.
    for component in range(4):
        values = {flips[component] if component < 3 else swap for flips, swap in seen}
        assert values == {False, True}


def test_no_transpose_when_y_and_x_differ(patch):
    raw, labels = patch[0][:, :, :48], patch[1][:, :, :48]
    for seed in range(16):
        augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(seed), **{**NOTHING, "flip": True, "transpose": True})
        assert augmented_raw.shape == raw.shape
        matches = [
            flips
            for flips in itertools.product((False, True), repeat=3)
            if np.array_equal(_flip_transpose(labels, flips, False), augmented_labels)
        ]
        assert len(matches) == 1
        np.testing.assert_array_equal(_flip_transpose(raw, matches[0], False), augmented_raw)


def test_elastic_deformation_keeps_label_ids_and_raw_label_alignment(patch):
    labels = patch[1]
    # raw := the labels' own boundary indicator, so raw and labels can be checked against each other.
    boundary_raw = _boundary_mask(labels).astype(np.float32)
    elastic_only = {**NOTHING, "elastic_probability": 1.0}
    for seed in range(3):
        deformed_raw, deformed_labels = augment(boundary_raw, labels, np.random.default_rng(seed), elastic_magnitude=3.0, **elastic_only)
        assert np.isin(deformed_labels, np.unique(labels)).all()
        changed = np.mean(deformed_labels != labels)
        assert changed > 0.05, "the deformation should move a noticeable part of the labels"

        # Boundaries are under 10 % of the voxels, so agreement is measured on them, not on all voxels.
        raw_boundaries = deformed_raw > 0.5
        label_boundaries = _boundary_mask(deformed_labels)
        assert label_boundaries[raw_boundaries].mean() > 0.9
        assert raw_boundaries[label_boundaries].mean() > 0.85
        # Against the undeformed labels they disagree: the deformation really moved raw.
        assert _boundary_mask(labels)[raw_boundaries].mean() < 0.6


def test_elastic_deformation_is_in_plane_and_shared_by_all_sections(patch):
    # A stack of identical sections stays a stack of identical sections.
    raw = np.repeat(patch[0][:1], 8, axis=0)
    labels = np.repeat(patch[1][:1], 8, axis=0)
    deformed_raw, deformed_labels = augment(raw, labels, np.random.default_rng(3), **{**NOTHING, "elastic_probability": 1.0})
    assert not np.array_equal(deformed_labels, labels)
    for section in range(1, 8):
        np.testing.assert_array_equal(deformed_raw[section], deformed_raw[0])
        np.testing.assert_array_equal(deformed_labels[section], deformed_labels[0])


def test_elastic_magnitude_controls_the_amount_of_deformation(patch):
    raw, labels = patch
    elastic_only = {**NOTHING, "elastic_probability": 1.0}
    changed = [
        np.mean(augment(raw, labels, np.random.default_rng(5), elastic_magnitude=magnitude, **elastic_only)[1] != labels)
        for magnitude in (0.5, 2.0, 6.0)
    ]
    assert changed[0] < changed[1] < changed[2]


def test_intensity_and_gamma_are_monotone_raw_only_changes(patch):
    raw, labels = patch
    order = np.argsort(raw, axis=None, kind="stable")
    for settings in ({"intensity": 0.3}, {"gamma": 0.5}, {"intensity": 0.3, "gamma": 0.5}):
        augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(1), **{**NOTHING, **settings})
        np.testing.assert_array_equal(augmented_labels, labels)
        assert not np.array_equal(augmented_raw, raw)
        # A grey-value map: brighter input voxels never come out darker.
        assert np.all(np.diff(augmented_raw.ravel()[order]) >= 0)


def test_gamma_alone_is_a_power_law(patch):
    raw, labels = patch
    augmented_raw, _ = augment(raw, labels, np.random.default_rng(2), **{**NOTHING, "gamma": 0.5})
    reference = np.unravel_index(np.argmin(np.abs(raw - 0.5)), raw.shape)
    exponent = np.log(augmented_raw[reference]) / np.log(raw[reference])
    assert np.exp(-0.5) <= exponent <= np.exp(0.5) and abs(exponent - 1) > 1e-3
    np.testing.assert_allclose(augmented_raw, raw**exponent, atol=1e-5)


def test_missing_sections_become_constant_and_leave_labels(patch):
    raw, labels = patch
    augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(0), **{**NOTHING, "missing_section_probability": 1.0})
    for section in augmented_raw:
        assert np.all(section == section.flat[0])
    np.testing.assert_allclose(augmented_raw[:, 0, 0], raw.mean(), rtol=1e-5)
    np.testing.assert_array_equal(augmented_labels, labels)

    augmented_raw, _ = augment(raw, labels, np.random.default_rng(0), **{**NOTHING, "missing_section_probability": 0.5})
    missing = np.array([np.all(section == section.flat[0]) for section in augmented_raw])
    assert 0 < missing.sum() < len(missing)
    np.testing.assert_array_equal(augmented_raw[~missing], raw[~missing])


def _shifted(volume, shift_y, shift_x):
    """``volume`` translated in-plane by (shift_y, shift_x), edge-replicated: out[y, x] = in[y - dy, x - dx]."""
    source_y = np.clip(np.arange(volume.shape[1]) - shift_y, 0, volume.shape[1] - 1)
    source_x = np.clip(np.arange(volume.shape[2]) - shift_x, 0, volume.shape[2] - 1)
    return volume[:, source_y][:, :, source_x]


def test_misalignment_shifts_raw_and_labels_from_one_section_on(patch):
    raw, labels = patch
    max_shift = 4
    interior = np.s_[:, max_shift:-max_shift, max_shift:-max_shift]
    first_sections = set()
    for seed in range(8):
        augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(seed), **{**NOTHING, "misalignment_probability": 1.0})
        unchanged = [np.array_equal(augmented_raw[z], raw[z]) and np.array_equal(augmented_labels[z], labels[z]) for z in range(len(raw))]
        # Exactly one jump: an unshifted prefix of at least one section, then only shifted sections.
        first_shifted = unchanged.index(False)
        assert first_shifted >= 1
        assert not any(unchanged[first_shifted:])
        first_sections.add(first_shifted)

        tail_raw, tail_labels = augmented_raw[first_shifted:], augmented_labels[first_shifted:]
        matches = [
            (shift_y, shift_x)
            for shift_y, shift_x in itertools.product(range(-max_shift, max_shift + 1), repeat=2)
            if np.array_equal(tail_raw[interior], _shifted(raw[first_shifted:], shift_y, shift_x)[interior])
        ]
        assert len(matches) == 1 and matches[0] != (0, 0)
        shift_y, shift_x = matches[0]
        # The labels moved by the same shift, raw is edge-replicated, labels are 0 where uncovered.
        np.testing.assert_array_equal(tail_labels[interior], _shifted(labels[first_shifted:], *matches[0])[interior])
        np.testing.assert_array_equal(tail_raw, _shifted(raw[first_shifted:], *matches[0]))
        uncovered = np.ones(raw.shape[1:], dtype=bool)
        uncovered[max(shift_y, 0) : raw.shape[1] + min(shift_y, 0), max(shift_x, 0) : raw.shape[2] + min(shift_x, 0)] = False
        assert np.all(tail_labels[:, uncovered] == 0)
        np.testing.assert_array_equal(tail_labels[:, ~uncovered], _shifted(labels[first_shifted:], *matches[0])[:, ~uncovered])
    assert len(first_sections) > 1


def test_blur_lowers_the_gradient_energy_of_blurred_sections_only(patch):
    raw, labels = patch
    augmented_raw, augmented_labels = augment(raw, labels, np.random.default_rng(4), **{**NOTHING, "blur_probability": 0.5})
    np.testing.assert_array_equal(augmented_labels, labels)
    blurred = np.array([not np.array_equal(augmented_raw[z], raw[z]) for z in range(len(raw))])
    assert 0 < blurred.sum() < len(blurred)
    for z in np.flatnonzero(blurred):
        assert _gradient_energy(augmented_raw[z]) < 0.5 * _gradient_energy(raw[z])
        # Blurring keeps the mean grey value of the section.
        assert abs(augmented_raw[z].mean() - raw[z].mean()) < 0.02


@pytest.mark.parametrize(
    "change, error, fragment",
    [
        ({"raw": "2d"}, ValueError, "raw must be 3D"),
        ({"labels": "2d"}, ValueError, "labels must be 3D"),
        ({"labels": "smaller"}, ValueError, "same shape"),
        ({"raw": "out_of_range"}, ValueError, "[0, 1]"),
        ({"raw": "nan"}, ValueError, "[0, 1]"),
        ({"raw": "uint8"}, TypeError, "raw must be float"),
        ({"labels": "float"}, TypeError, "labels must have an integer dtype"),
        ({"rng": 0}, TypeError, "rng"),
        ({"elastic_probability": 1.5}, ValueError, "elastic_probability"),
        ({"missing_section_probability": -0.1}, ValueError, "missing_section_probability"),
        ({"misalignment_probability": 2}, ValueError, "misalignment_probability"),
        ({"blur_probability": float("nan")}, ValueError, "blur_probability"),
        ({"intensity": -0.1}, ValueError, "intensity"),
        ({"gamma": -1}, ValueError, "gamma"),
        ({"elastic_magnitude": -2}, ValueError, "elastic_magnitude"),
        ({"elastic_sigma": float("inf")}, ValueError, "elastic_sigma"),
        ({"blur_sigma": -1}, ValueError, "blur_sigma"),
        ({"misalignment_max_shift": -1}, ValueError, "misalignment_max_shift"),
        ({"misalignment_max_shift": 2.5}, ValueError, "misalignment_max_shift"),
    ],
)
def test_bad_arguments_raise(patch, change, error, fragment):
    raw, labels = patch[0][:4, :16, :16], patch[1][:4, :16, :16]
    variants = {
        "2d": lambda array: array[0],
        "smaller": lambda array: array[:, :8],
        "out_of_range": lambda array: array + 1,
        "nan": lambda array: np.where(array > 0.5, np.nan, array).astype(array.dtype),
        "uint8": lambda array: (array * 255).astype(np.uint8),
        "float": lambda array: array.astype(np.float32),
    }
    arguments = {"raw": raw, "labels": labels, "rng": np.random.default_rng(0)}
    keywords = {}
    for name, value in change.items():
        if name in ("raw", "labels"):
            arguments[name] = variants[value](arguments[name])
        elif name == "rng":
            arguments[name] = value
        else:
            keywords[name] = value
    with pytest.raises(error, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        augment(arguments["raw"], arguments["labels"], arguments["rng"], **keywords)
