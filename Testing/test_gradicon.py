"""GradICON backends (CPU, offline, random weights on a 65^3 grid): point mapping against
icon_registration's own ITK transform, field-of-view pre-alignment, the lung mask, instance optimisation,
weight loading errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from conftest import local_weights

torch = pytest.importorskip("torch", reason="deep-learning extra not installed (pip install '.[gpu]')")
pytest.importorskip("unigradicon", reason="deep-learning extra not installed (pip install '.[gpu]')")

import SimpleITK as sitk  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from LinGuinELib.core.errors import InputError, LinGuinEError  # noqa: E402
from LinGuinELib.backends.models import ModelManager  # noqa: E402
from LinGuinELib.registration import gradicon  # noqa: E402
from random_weights import random_gradicon_weights  # noqa: E402
from LinGuinELib.core.study import Scan  # noqa: E402

SIZE = 65  # the smallest grid the network accepts; production uses 175


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return random_gradicon_weights(tmp_path_factory.mktemp("gradicon") / "Step_2_final.trch", seed=0)


def backend(weights, tmp_path, cls=gradicon.UniGradICONRegistration, **kw):
    return cls(device="cpu", weights=str(weights), input_size=SIZE, models=ModelManager(home=tmp_path / "home"), **kw)


def phantom(scan_id, shape, spacing, origin, euler_deg, seed):
    """A body-like ellipsoid with a few bright/dark blobs, on a rotated, anisotropic grid."""
    rng = np.random.default_rng(seed)
    kk, jj, ii = np.indices(shape).astype(float)
    arr = np.full(shape, -1000.0, np.float32)
    c = np.array(shape) / 2
    arr[((kk - c[0]) / (0.45 * shape[0])) ** 2 + ((jj - c[1]) / (0.4 * shape[1])) ** 2
        + ((ii - c[2]) / (0.42 * shape[2])) ** 2 < 1] = 30
    for _ in range(6):
        p, r = rng.uniform(0.2, 0.8, 3) * shape, rng.uniform(2, 6)
        arr[(kk - p[0]) ** 2 + (jj - p[1]) ** 2 + (ii - p[2]) ** 2 < r * r] = rng.uniform(-800, 900)
    arr += rng.normal(0, 20, shape).astype(np.float32)
    direction = Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix()
    return Scan(scan_id, arr, origin, spacing, direction, dt.datetime(2020, 1, 1))


def set_known_displacement(net):
    """Give the last convolution a non-zero output that depends strongly on the images and on which one is
    fixed (the network sees [moving, fixed] as its two input channels), plus a small constant shift."""
    last = net.regis_net.netPsi.net.lastConv
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.25)
        last.bias.copy_(torch.tensor([0.1, -0.15, 0.1]))  # network output is lastConv / 10, in [0, 1] units


def to_itk(scan):
    import itk

    arr = (np.clip(scan.array, -1000, 1000) + 1000) / 2000  # uniGradICON's CT preprocessing
    image = itk.image_from_array(arr.astype(np.float32))
    image.SetOrigin(tuple(scan.origin))
    image.SetSpacing(tuple(scan.spacing))
    image.SetDirection(itk.matrix_from_array(scan.direction))
    return image


def test_points_agree_with_icon_registration_itk_transform(random_weights, tmp_path):
    from icon_registration import itk_wrapper

    a = phantom("A", (30, 48, 40), (0.9, 0.8, 2.5), (-20, 15, -40), (5, -10, 20), 1)
    b = phantom("B", (36, 44, 50), (0.85, 0.95, 2.0), (5, -10, -30), (-8, 4, -15), 2)
    reg = backend(random_weights, tmp_path, prealign="never")
    net = reg.load()
    set_known_displacement(net)
    forward, backward = reg.register_both(a, b)
    phi_ab, phi_ba = itk_wrapper.register_pair(net, to_itk(a), to_itk(b))

    rng = np.random.default_rng(0)
    p_a = a.kji_to_lps(rng.uniform(0, 1, (25, 3)) * (np.array(a.shape) - 1))
    p_b = b.kji_to_lps(rng.uniform(0, 1, (25, 3)) * (np.array(b.shape) - 1))
    ours_b = b.lps_to_kji(forward(p_a))
    theirs_b = b.lps_to_kji(np.array([phi_ba.TransformPoint([float(v) for v in p]) for p in p_a]))
    ours_a = a.lps_to_kji(backward(p_b))
    theirs_a = a.lps_to_kji(np.array([phi_ab.TransformPoint([float(v) for v in p]) for p in p_b]))
    # The adapter agrees with upstream to ~1e-6 voxel; a swapped direction, a wrong intensity window or
    # inputs scaled to [-1, 1] each move the points by far more than 1e-3 voxel here.
    assert np.abs(ours_b - theirs_b).max() < 1e-3
    assert np.abs(ours_a - theirs_a).max() < 1e-3
    # the known displacement really moved the points (a box-to-box map would fail the check above)
    box_b = b.lps_to_kji(gradicon.FieldPointMap(np.zeros_like(forward.disp), forward.source, forward.target)(p_a))
    assert np.abs(ours_b - box_b).max(axis=0).min() > 1.0
    assert forward.disp.std(axis=(1, 2, 3)).min() > 0.05  # not a constant shift: interpolation is exercised
    # order-dependent: the field with A moving differs from the one with B moving (both on the same grid size)
    assert np.abs(forward.disp - backward.disp).max() > 0.05


def test_different_fields_of_view_are_prealigned(random_weights, tmp_path, ct_dir):
    image = sitk.ReadImage(str(ct_dir / "lung2_image.nrrd"))
    a = Scan.from_sitk(image, "full", dt.datetime(2020, 1, 1), sitk.ReadImage(str(ct_dir / "lung2_label.nrrd")))
    crop = (slice(8, 52), slice(60, 470), slice(30, 440))
    shift = np.array([25.0, -40.0, 120.0])  # a different scanner frame on the follow-up
    origin = a.kji_to_lps(np.array([[s.start for s in crop]], float))[0] + shift
    b = Scan("cropped", a.array[crop].copy(), origin, a.spacing, a.direction, dt.datetime(2021, 1, 1))
    points = a.kji_to_lps(np.array([np.argwhere(a.label > 0).mean(axis=0), [30, 256, 256], [20, 150, 300]]))

    reg = backend(random_weights, tmp_path)  # zero displacement: only the pre-alignment moves points
    forward, backward = reg.register_both(a, b)
    assert reg.last_prealigned
    assert np.linalg.norm(forward(points) - (points + shift), axis=1).max() < 2.0
    assert np.linalg.norm(backward(points + shift) - points, axis=1).max() < 2.0
    # without pre-alignment, box-to-box is 15-30 mm off here
    box = gradicon.FieldPointMap(np.zeros_like(forward.disp), gradicon.NetworkFrame(a, SIZE), gradicon.NetworkFrame(b, SIZE))
    assert np.linalg.norm(box(points) - (points + shift), axis=1).min() > 10.0


def test_same_field_of_view_is_not_prealigned(random_weights, tmp_path, scan_factory):
    a = scan_factory("a", shape=(70, 70, 70), spacing=(1.0, 1.0, 1.0))
    b = scan_factory("b", shape=(70, 70, 70), spacing=(1.0, 1.0, 1.0), seed=1)
    assert gradicon.box_mismatch_mm(a, b) == 0.0
    reg = backend(random_weights, tmp_path)
    forward, _ = reg.register_both(a, b)
    assert not reg.last_prealigned
    p = a.kji_to_lps(np.array([[10.0, 20.0, 30.0], [35.0, 35.0, 35.0]]))
    np.testing.assert_allclose(forward(p), p, atol=1e-6)  # zero displacement, same box: identity


def test_lung_mask_on_real_ct(ct_dir):
    scan = Scan.from_sitk(sitk.ReadImage(str(ct_dir / "lung1_image.nrrd")), "lung1", dt.datetime(2020, 1, 1),
                          sitk.ReadImage(str(ct_dir / "lung1_label.nrrd")))
    hu, lab = scan.array[:, ::3, ::3], scan.label[:, ::3, ::3]
    spacing = scan.spacing_kji * np.array([1, 3, 3])
    mask = gradicon.lung_mask(hu, spacing, axial_axis=0)
    litres = mask.sum() * np.prod(spacing) / 1e6
    assert 1.5 < litres < 8.0
    assert hu[mask].mean() < -500  # lung parenchyma, not soft tissue
    assert not mask[:, 0, :].any() and not mask[:, :, 0].any()  # outside air excluded
    assert mask[lab > 0].mean() > 0.9  # the nodule lies inside the lung mask


def test_lung_model_refuses_scans_without_lungs(random_weights, tmp_path, scan_factory):
    soft = scan_factory("abdomen", shape=(70, 70, 70), spacing=(1.0, 1.0, 1.0))
    soft.array[:] = np.clip(soft.array + 740, -100, 100)  # soft tissue everywhere, no air
    reg = backend(random_weights, tmp_path, cls=gradicon.LungGradICONRegistration)
    with pytest.raises(InputError, match="no lungs found"):
        reg.register_both(soft, soft)


def test_weights_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.trch"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LinGuinEError, match="garbage.trch"):
        backend(garbage, tmp_path).load()
    assert garbage.exists()  # a user's file is never deleted
    wrong = tmp_path / "wrong.trch"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(LinGuinEError, match="not unigradicon weights"):
        backend(wrong, tmp_path).load()
    with pytest.raises(InputError, match="at least 65"):
        gradicon.UniGradICONRegistration(device="cpu", input_size=64)
    with pytest.raises(InputError, match="io-steps"):
        gradicon.UniGradICONRegistration(device="cpu", io_steps=-1)


@pytest.mark.slow
def test_instance_optimisation_restores_the_weights(random_weights, tmp_path, scan_factory):
    a = scan_factory("a", shape=(70, 70, 70), spacing=(1.0, 1.0, 1.0))
    b = scan_factory("b", shape=(70, 70, 70), spacing=(1.0, 1.0, 1.0), blobs=(((38, 33, 36), 8.0),), seed=1)
    reg = backend(random_weights, tmp_path, io_steps=1)
    net = reg.load()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    forward, _ = reg.register_both(a, b)
    assert np.abs(forward.disp).max() > 0  # the optimised network moved away from the identity ...
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... and its weights came back


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.skipif(local_weights("unigradicon") is None, reason="needs the uniGradICON weights: set LINGUINE_WEIGHTS to "
                                                   "Step_2_final.trch or a folder holding unigradicon/Step_2_final.trch")
def test_real_weights_recover_a_known_shift(ct_dir):
    full = Scan.from_sitk(sitk.ReadImage(str(ct_dir / "lung2_image.nrrd")), "a", dt.datetime(2020, 1, 1),
                          sitk.ReadImage(str(ct_dir / "lung2_label.nrrd")))
    moved = Scan("b", np.roll(full.array, (1, 6, -5), axis=(0, 1, 2)), full.origin, full.spacing, full.direction,
                 dt.datetime(2021, 1, 1))  # anatomy moved by 1 slice, 6 rows, -5 columns (about 5 / 3.8 / -3.1 mm)
    truth = full.kji_to_lps(np.argwhere(full.label > 0).mean(axis=0)[None] + [1, 6, -5])
    reg = gradicon.UniGradICONRegistration(device="auto", models=ModelManager(offline=True))
    forward, backward = reg.register_both(full, moved)
    centre = full.kji_to_lps(np.argwhere(full.label > 0).mean(axis=0)[None])
    assert np.linalg.norm(forward(centre) - truth) < 2.5
    assert np.linalg.norm(backward(truth) - centre) < 2.5


def chest_phantom(scan_id="chest", shape=(40, 90, 96), spacing=(3.0, 3.0, 4.0), seed=5):
    """Air around a soft-tissue body holding two air-filled 'lungs' (about 1.9 L) and a nodule."""
    rng = np.random.default_rng(seed)
    kk, jj, ii = np.indices(shape).astype(float)
    c = np.array(shape) / 2
    arr = np.full(shape, -1000.0, np.float32)
    arr[((kk - c[0]) / (0.48 * shape[0])) ** 2 + ((jj - c[1]) / (0.42 * shape[1])) ** 2
        + ((ii - c[2]) / (0.45 * shape[2])) ** 2 < 1] = 40
    for side in (-1, 1):
        arr[((kk - c[0]) / (0.35 * shape[0])) ** 2 + ((jj - c[1]) / (0.3 * shape[1])) ** 2
            + ((ii - c[2] - side * 0.22 * shape[2]) / (0.17 * shape[2])) ** 2 < 1] = -850
    arr[(kk - c[0]) ** 2 + (jj - c[1]) ** 2 + (ii - c[2] - 0.22 * shape[2]) ** 2 < 9] = 20
    arr += rng.normal(0, 25, shape).astype(np.float32)
    return Scan(scan_id, arr, (-140.0, -130.0, -80.0), spacing, np.eye(3), dt.datetime(2020, 1, 1))


def test_lung_input_matches_upstream_preprocess_then_register_pair(random_weights, tmp_path):
    """The lung model's network input equals what icon_registration's register_pair feeds the network after
    lung_network_preprocess (mask applied at full resolution, then resized)."""
    import itk
    from icon_registration import itk_wrapper
    from icon_registration.pretrained_models.lung_ct import lung_network_preprocess

    scan = chest_phantom()
    reg = backend(random_weights, tmp_path, cls=gradicon.LungGradICONRegistration, prealign="never")
    net = reg.load()
    ours = reg._input(scan, gradicon.NetworkFrame(scan, SIZE), None)[0, 0].cpu().numpy()

    def itk_image(array):
        image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
        image.SetOrigin(tuple(scan.origin))
        image.SetSpacing(tuple(scan.spacing))
        image.SetDirection(itk.matrix_from_array(scan.direction))
        return image

    mask = gradicon.lung_mask(scan.array, scan.spacing_kji, 0)
    assert 1.0 < mask.sum() * np.prod(scan.spacing) / 1e6 < 3.0  # litres: the two 'lungs'
    upstream = lung_network_preprocess(itk_image(scan.array), itk_image(mask))
    fed = []

    class Fed(Exception):
        pass

    def capture(module, args):  # record what register_pair feeds the network, then stop it (saves a forward)
        fed.append(args[0][0, 0].cpu().numpy())
        raise Fed

    hook = net.register_forward_pre_hook(capture)
    try:
        with pytest.raises(Fed):
            itk_wrapper.register_pair(net, upstream, upstream)
    finally:
        hook.remove()
    assert ours.shape == fed[0].shape == (SIZE,) * 3
    assert np.abs(ours - fed[0]).max() < 1e-5
    # the mask matters where it cuts: masking on the resized grid instead differs by far more
    resized_mask = gradicon.lung_mask(
        np.asarray(torch.nn.functional.interpolate(torch.from_numpy(scan.array)[None, None], size=(SIZE,) * 3,
                                                   mode="trilinear", align_corners=False)[0, 0]),
        gradicon.NetworkFrame(scan, SIZE).spacing_kji, 0)
    unmasked = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy((np.clip(scan.array, -1000, 0) + 1000) / 1000)[None, None], size=(SIZE,) * 3,
        mode="trilinear", align_corners=False)[0, 0])
    assert np.abs(unmasked * resized_mask - fed[0]).max() > 0.05


def test_lung_weights_load_like_upstream_init_network(tmp_path):
    """A state dict shaped like the published lung checkpoint (upstream lung_ct.make_network's regis_net) loads
    tensor for tensor, and, as upstream's init_network (strict=False), a missing or extra tensor is tolerated;
    uniGradICON stays strict, and a file matching nothing is refused naming it."""
    from icon_registration.pretrained_models import lung_ct

    torch.manual_seed(11)
    upstream = lung_ct.make_network()
    upstream.assign_identity_map([1, 1, 175, 175, 175])  # as init_network does
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in upstream.regis_net.state_dict().items()}
    path = tmp_path / "lung_model_weights_step_2.trch"
    torch.save(state, path)
    net = backend(path, tmp_path, cls=gradicon.LungGradICONRegistration).load()
    ours = net.regis_net.state_dict()
    assert set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)

    dropped = next(iter(state))
    partial = {k: v for k, v in state.items() if k != dropped} | {"extra.num_batches_tracked": torch.tensor(1)}
    torch.save(partial, tmp_path / "partial.trch")
    loaded = backend(tmp_path / "partial.trch", tmp_path / "p", cls=gradicon.LungGradICONRegistration).load()
    assert torch.equal(loaded.regis_net.state_dict()[list(state)[1]], state[list(state)[1]])
    with pytest.raises(LinGuinEError, match="not unigradicon weights"):
        backend(tmp_path / "partial.trch", tmp_path / "u").load()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.trch")
    with pytest.raises(LinGuinEError, match="other.trch.*not lunggradicon weights"):
        backend(tmp_path / "other.trch", tmp_path / "o", cls=gradicon.LungGradICONRegistration).load()
