"""Corruptions (MNIST-C, CIFAR-10-C): shape and dtype kept, deterministic under a seed, the identity at zero
strength, more damage at higher severity; and the cache of corrupted sets with its checksum."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from depthlab.cli.main import main
from depthlab.data import corrupt
from depthlab.data.corrupt import (CIFAR10_C, MNIST_C, CorruptionUnavailable, corrupt_image, corrupt_images,
                                   motion_blur_kernel, psnr)
from depthlab.data.corrupt_cache import cache_dir, cached_sets, corrupted_set, verify_cache
from depthlab.errors import DataError, SpecError


def digits(n=3, seed=0) -> np.ndarray:
    """MNIST-like images: thick white strokes on black, uint8 N×1×28×28."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.new("L", (28, 28))
        ImageDraw.Draw(img).line([tuple(rng.integers(5, 23, 2).tolist()) for _ in range(4)], fill=255, width=3)
        out.append(np.asarray(img)[None])
    return np.stack(out)


def photos(n=3, seed=1) -> np.ndarray:
    """CIFAR-like images: smooth colour fields, uint8 N×3×32×32."""
    coarse = np.random.default_rng(seed).random((n, 3, 8, 8))
    return (ndimage.zoom(coarse, (1, 1, 4, 4), order=1) * 255).astype(np.uint8)


IMAGES = {"mnist-c": digits(), "cifar10-c": photos()}
CASES = [(suite, name) for suite, table in corrupt.SUITES.items() for name in table]


def made_here(suite, name):
    spec = corrupt.SUITES[suite][name]
    return [s for s in spec.severities() if not spec.needs(s)]


def test_the_suites_are_the_references():
    assert list(MNIST_C) == ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                             "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
                             "canny_edges"]
    assert len(CIFAR10_C) == 19 and list(CIFAR10_C)[-4:] == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert set(corrupt.MNISTC_SEVERITY) == set(MNIST_C)
    # a few parameters checked against the reference tables
    assert MNIST_C["shot_noise"].param(5) == 3 and CIFAR10_C["shot_noise"].param(5) == 50
    assert MNIST_C["glass_blur"].param(1) == (0.7, 1, 2) and CIFAR10_C["glass_blur"].param(4) == (0.25, 1, 2)
    assert CIFAR10_C["elastic_transform"].param(2) == pytest.approx((32 * 0.05, 32 * 0.2, 32 * 0.07))


@pytest.mark.parametrize("suite,name", CASES)
def test_shape_dtype_and_determinism(suite, name):
    images = IMAGES[suite]
    for severity in made_here(suite, name)[:1] + made_here(suite, name)[-1:]:
        out = corrupt_images(images, suite, name, severity, seed=0)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(out, corrupt_images(images, suite, name, severity, seed=0))
        assert not np.array_equal(out, images)


@pytest.mark.parametrize("suite,name", [c for c in CASES if corrupt.SUITES[c[0]][c[1]].identity is not None])
def test_zero_strength_is_the_identity(suite, name):
    spec = corrupt.SUITES[suite][name]
    for index, image in enumerate(IMAGES[suite]):
        assert np.array_equal(corrupt_image(image, suite, name, 1, seed=0, index=index, param=spec.identity), image)


# CIFAR-10-C's elastic table orders its distortion the other way round: severity 1 has the largest affine jitter
# (0.08·32 px) and no displacement field, severity 5 a small one (0.03·32 px); by PSNR, 1 damages most.
REVERSED = {("cifar10-c", "elastic_transform")}


@pytest.mark.parametrize("suite,name", [c for c in CASES if corrupt.SUITES[c[0]][c[1]].levels is not None])
def test_damage_grows_from_severity_one_to_five(suite, name):
    severities = made_here(suite, name)
    if not {1, 5} <= set(severities):
        pytest.skip(f"{suite} {name}: severity 1 or 5 needs what is not installed here")
    images = IMAGES[suite]
    mean_psnr = {s: np.mean([psnr(a, b) for a, b in zip(images, corrupt_images(images, suite, name, s, 0))])
                 for s in (1, 5)}
    if (suite, name) in REVERSED:
        assert mean_psnr[5] > mean_psnr[1]
    else:
        assert mean_psnr[5] < mean_psnr[1]


def test_an_image_is_corrupted_the_same_in_any_set():
    images = digits(5)
    whole = corrupt_images(images, "mnist-c", "shot_noise", 5, seed=2)
    assert np.array_equal(corrupt_images(images[:2], "mnist-c", "shot_noise", 5, seed=2), whole[:2])
    assert not np.array_equal(corrupt_images(images, "mnist-c", "shot_noise", 5, seed=3), whole)


def test_bad_names_and_severities_name_the_allowed_values():
    with pytest.raises(SpecError, match="corruption: got 'frog'; allowed: shot_noise, impulse_noise"):
        corrupt.corruption("mnist-c", "frog")
    with pytest.raises(SpecError, match="severity: got 6"):
        MNIST_C["fog"].param(6)
    with pytest.raises(SpecError, match="no levels"):
        MNIST_C["stripe"].param(3)
    assert MNIST_C["stripe"].severities((1, 2, 3)) == [0]
    with pytest.raises(SpecError, match="dataset"):
        corrupt.suite_of("imagenet")


def test_motion_blur_is_imagemagicks_one_sided_gaussian():
    taps = motion_blur_kernel(10, 3, 0)
    assert len(taps) == 21 and sum(w for w, _, _ in taps) == pytest.approx(1.0)
    assert [(dy, dx) for _, dy, dx in taps[:3]] == [(0, 0), (0, 1), (0, 2)]  # angle 0: along the rows
    assert [(dy, dx) for _, dy, dx in motion_blur_kernel(2, 1, 90)] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    assert motion_blur_kernel(0, 1, 30) == [(1.0, 0, 0)]


def test_canny_finds_the_border_of_a_square():
    image = np.zeros((28, 28))
    image[8:20, 8:20] = 1.0
    edges = corrupt.canny(image)
    assert edges[8:20, 7:9].any(axis=1).all() and edges[7:9, 8:20].any(axis=0).all()  # left and top sides
    assert not edges[11:17, 11:17].any() and not edges[:4].any()  # not inside, not far outside


def test_opencv_spatter_and_frost_say_what_they_need(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_FROST", str(tmp_path / "frost"))
    with pytest.raises(CorruptionUnavailable, match="frost needs its texture photographs"):
        corrupt_image(photos(1)[0], "cifar10-c", "frost", 3, seed=0)
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(CorruptionUnavailable, match=r"OpenCV \(pip install 'depthlab\[corrupt\]'\)"):
            corrupt_image(photos(1)[0], "cifar10-c", "spatter", 2, seed=0)
    assert corrupt.unavailable("cifar10-c", "spatter", 5) is None  # mud: numpy alone
    # with the textures present, frost is made like any other corruption
    (tmp_path / "frost").mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(corrupt.FROST_FILES[:2]):
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "frost" / name)
    out = corrupt_images(photos(2), "cifar10-c", "frost", 5, seed=0)
    assert out.shape == (2, 3, 32, 32) and not np.array_equal(out, photos(2))


def test_sets_are_cached_with_a_checksum_and_made_again_when_damaged(tmp_path, monkeypatch):
    images = digits(4)
    first = corrupted_set(images, "mnist", "fog", 5, seed=0, root=tmp_path)
    (meta,) = cached_sets(tmp_path)
    assert meta["problem"] is None and meta["corruption"] == "fog" and meta["shape"] == [4, 1, 28, 28]
    monkeypatch.setattr(corrupt, "corrupt_images", lambda *a, **k: pytest.fail("made again, not read"))
    assert np.array_equal(corrupted_set(images, "mnist", "fog", 5, seed=0, root=tmp_path), first)
    assert len(verify_cache(tmp_path)) == 1
    data = cache_dir(tmp_path) / f"{meta['name']}.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{meta['name']}: sha256 of .* Fix: delete"):
        verify_cache(tmp_path)
    monkeypatch.undo()
    heard = []
    again = corrupted_set(images, "mnist", "fog", 5, seed=0, root=tmp_path, log=heard.append)
    assert np.array_equal(again, first) and "making it again" in heard[0]
    assert verify_cache(tmp_path)[0]["problem"] is None
    # another subset of images is another set
    corrupted_set(images[:2], "mnist", "fog", 5, seed=0, root=tmp_path)
    assert len(cached_sets(tmp_path)) == 2
    assert json.loads((cache_dir(tmp_path) / f"{meta['name']}.json").read_text())["seed"] == 0


def test_cached_sets_get_the_usual_file_mode(tmp_path):
    """Shared data directories: a cached set is readable by whoever may read the folder (mkstemp made it 0600)."""
    umask = os.umask(0o022)
    try:
        corrupted_set(digits(2), "mnist", "fog", 1, seed=0, root=tmp_path)
    finally:
        os.umask(umask)
    files = sorted(cache_dir(tmp_path).iterdir())
    assert [f.suffix for f in files] == [".json", ".npy"]  # and no temporary file left behind
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}


def test_data_corrupt_list_and_verify(tmp_path, capsys):
    corrupted_set(digits(2), "mnist", "stripe", 0, seed=0, root=tmp_path)
    assert main(["data", "corrupt", "list", "mnist", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist-c (google-research/mnist-c" in out and "60 | 25 | 12 | 5 | 3" in out
    assert "cached sets in" in out and ": 1" in out
    assert main(["data", "corrupt", "verify", "--root", str(tmp_path)]) == 0
    assert "every checksum matches" in capsys.readouterr().out
    next(cache_dir(tmp_path).glob("*.npy")).write_bytes(b"damaged")
    assert main(["data", "corrupt", "verify", "--root", str(tmp_path)]) == 2
    assert "damaged corrupted sets" in capsys.readouterr().err


# A process that makes a corrupted set and stops mid-write: its numpy writes a few bytes, says so, then sleeps
# (killed there, or kept alive as a writer that is still at work).
STALLED_WRITER = """
import sys, time
import numpy as np
from depthlab.data.corrupt_cache import corrupted_set

def stalled(f, array, **options):
    f.write(b"half a set")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

np.save = stalled
corrupted_set(np.zeros((2, 1, 28, 28), np.uint8), "mnist", "fog", 1, seed=int(sys.argv[2]), root=sys.argv[1])
"""


def test_a_writer_killed_mid_write_leaves_no_part_file_behind_the_next_use(tmp_path):
    """#23: the corrupted-set cache kept the hidden `.part` file of a process killed while writing a set. The
    next use removes it, and never the part of a writer still at work."""
    import signal
    import subprocess
    import sys
    import time

    writers = [subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(tmp_path), str(seed)],
                                stdout=subprocess.PIPE, text=True) for seed in (0, 1)]
    try:
        assert [w.stdout.readline() for w in writers] == ["writing\n"] * 2
        folder = cache_dir(tmp_path)
        dead, alive = (next(folder.glob(f".*-seed{seed}-*.npy.*.part")) for seed in (0, 1))
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        an_hour_ago = time.time() - 3600
        for part in (dead, alive):  # both look abandoned by their age: only the lock tells the live one
            os.utime(part, (an_hour_ago, an_hour_ago))
        corrupted_set(digits(2), "mnist", "fog", 1, seed=2, root=tmp_path)
        assert not dead.exists() and alive.exists()
    finally:
        for w in writers:
            w.kill()
            w.wait(timeout=30)
            w.stdout.close()
    hidden = [p.name for p in cache_dir(tmp_path).iterdir() if p.name.startswith(".")]
    assert hidden == [alive.name]  # the killed one's is gone; the other's goes once it is old and unheld
