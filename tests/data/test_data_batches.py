import pytest
import torch

from depthlab.data import DeviceBatches, eval_batches, load, make_batches, normalise
from depthlab.errors import SpecError

MEAN, STD = (0.4,), (0.2,)


def _data(n=40, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=g)  # no zeros: padding is visible
    return x, torch.arange(n) % 10


def _collect(batches, epoch):
    return [tuple(t.clone() for t in b) for b in batches.epoch(epoch)]


def test_normalise():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1×2×1×2
    out = normalise(x, (0.5, 0.2), (0.5, 0.1))
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_shapes_len_and_dtypes():
    x, y = _data(n=40)
    b = DeviceBatches(x, y, batch_size=16, seeds=[0, 1, 2], mean=MEAN, std=STD)
    assert len(b) == 2
    assert len(DeviceBatches(x, y, batch_size=16, seeds=[0], mean=MEAN, std=STD, drop_last=False)) == 3
    batches = _collect(b, 0)
    assert len(batches) == 2
    xb, yb, idx = batches[0]
    assert xb.shape == (3, 16, 1, 8, 8) and xb.dtype == torch.float32
    assert yb.shape == (3, 16) and yb.dtype == torch.int64 and idx.dtype == torch.int64
    assert torch.equal(yb, y[idx])
    assert torch.allclose(xb, normalise(x[idx], MEAN, STD))  # no augmentation: just gathered and normalised


def test_deterministic_for_a_seed_and_new_each_epoch():
    x, y = _data()
    make = lambda: DeviceBatches(x, y, batch_size=8, seeds=[3, 4], mean=MEAN, std=STD, translate=2, flip=True)
    a, b = _collect(make(), 0), _collect(make(), 0)
    assert all(torch.equal(s, t) for ba, bb in zip(a, b) for s, t in zip(ba, bb))
    c = _collect(make(), 1)
    assert not torch.equal(torch.cat([t[2] for t in a], 1), torch.cat([t[2] for t in c], 1))


def test_each_epoch_is_a_permutation_and_models_differ():
    x, y = _data(n=37)
    b = DeviceBatches(x, y, batch_size=10, seeds=[0, 1], mean=MEAN, std=STD, drop_last=False)
    idx = torch.cat([t[2] for t in _collect(b, 0)], 1)
    assert idx.shape == (2, 37)
    for m in range(2):
        assert sorted(idx[m].tolist()) == list(range(37))
    assert not torch.equal(idx[0], idx[1])


def test_pack_invariance():
    """Model m's batches are identical alone and packed, whatever the other models' settings."""
    x, y = _data(n=50, c=3, h=10, w=10)
    seeds, translate, flip = [5, 7, 9, 11], [2, 0, 3, 1], [True, False, True, False]
    pack = DeviceBatches(x, y, batch_size=12, seeds=seeds, mean=MEAN * 3, std=STD * 3, translate=translate, flip=flip)
    for epoch in (0, 3):
        packed = _collect(pack, epoch)
        for m in range(len(seeds)):
            alone = DeviceBatches(x, y, batch_size=12, seeds=[seeds[m]], mean=MEAN * 3, std=STD * 3,
                                  translate=translate[m], flip=flip[m])
            for (px, py, pi), (ax, ay, ai) in zip(packed, _collect(alone, epoch), strict=True):
                assert torch.equal(px[m], ax[0]) and torch.equal(py[m], ay[0]) and torch.equal(pi[m], ai[0])


def _shifted(img, dy, dx, flip):
    """img (C×H×W) moved by (dy, dx) with zero fill, then optionally mirrored: what the augmentation makes."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
        :, max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out.flip(-1) if flip else out


def test_augmentation_keeps_shape_and_moves_pixels():
    x, y = _data(n=64, c=2)
    t = 2
    b = DeviceBatches(x, y, batch_size=32, seeds=[0], mean=MEAN * 2, std=STD * 2, translate=t, flip=True)
    seen_shift, seen_flip, moved = set(), set(), 0
    for xb, yb, idx in b.epoch(0):
        assert xb.shape == (1, 32, 2, 8, 8) and xb.dtype == torch.float32 and torch.equal(yb, y[idx])
        raw = torch.round((xb[0] * STD[0] + MEAN[0]) * 255).to(torch.uint8)  # undo the normalisation
        for k in range(32):
            src = x[idx[0, k]]
            moved += not torch.equal(raw[k], src)
            matches = [(dy, dx, f) for dy in range(-t, t + 1) for dx in range(-t, t + 1) for f in (False, True)
                       if torch.equal(raw[k], _shifted(src, dy, dx, f))]
            assert matches, "every output is the input shifted by at most `translate` pixels, maybe mirrored"
            dy, dx, f = matches[0]
            seen_shift.add((dy, dx))
            seen_flip.add(f)
    assert moved > 48 and len(seen_shift) > 10 and seen_flip == {False, True}


def test_flip_only():
    x, y = _data(n=64)
    b = DeviceBatches(x, y, batch_size=64, seeds=[1], mean=MEAN, std=STD, flip=True)
    xb, _, idx = next(iter(b.epoch(0)))
    plain, mirrored = normalise(x[idx[0]], MEAN, STD), normalise(x[idx[0]].flip(-1), MEAN, STD)
    is_plain = (xb[0] == plain).flatten(1).all(1)
    is_flip = (xb[0] == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_flip).all()) and 10 < int(is_flip.sum()) < 54


def test_make_batches_refuses_flip_for_mnist(mnist_package):
    with pytest.raises(SpecError) as err:
        make_batches(mnist_package, batch_size=64, seeds=[0], flip=True)
    assert err.value.field == "flip" and "mnist" in str(err.value)
    with pytest.raises(SpecError, match="flip"):
        make_batches(mnist_package, batch_size=64, seeds=[0, 1], flip=[False, True])
    b = make_batches(mnist_package, batch_size=64, seeds=[0, 1], translate=2)
    assert len(b) == 60000 // 64 and b.flip == [False, False]
    xb, yb, _ = next(iter(b.epoch(0)))
    assert xb.shape == (2, 64, 1, 28, 28)


def test_make_batches_allows_flip_where_valid():
    ds = load("synthetic", n_train=64)
    b = make_batches(ds, batch_size=16, seeds=[0], flip=True)
    assert b.flip == [True] and len(b) == 4


def test_bad_arguments():
    x, y = _data(n=20)
    with pytest.raises(SpecError, match="seeds"):
        DeviceBatches(x, y, batch_size=4, seeds=[], mean=MEAN, std=STD)
    with pytest.raises(SpecError, match="translate"):
        DeviceBatches(x, y, batch_size=4, seeds=[0, 1], mean=MEAN, std=STD, translate=[1, 2, 3])
    with pytest.raises(SpecError, match="flip"):
        DeviceBatches(x, y, batch_size=4, seeds=[0], mean=MEAN, std=STD, flip="yes")
    with pytest.raises(SpecError, match="batch_size"):
        DeviceBatches(x, y, batch_size=21, seeds=[0], mean=MEAN, std=STD)


def test_eval_batches_in_order():
    x, y = _data(n=25)
    out = list(eval_batches(x, y, 10, MEAN, STD))
    assert [len(yb) for _, yb in out] == [10, 10, 5]
    assert torch.equal(torch.cat([yb for _, yb in out]), y)
    assert torch.equal(torch.cat([xb for xb, _ in out]), normalise(x, MEAN, STD))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y = _data(n=50, c=3)
    kw = dict(batch_size=10, seeds=[1, 2], mean=MEAN * 3, std=STD * 3, translate=[2, 1], flip=[True, False])
    cpu = _collect(DeviceBatches(x, y, **kw), 2)
    gpu = _collect(DeviceBatches(x.cuda(), y.cuda(), **kw), 2)
    for a, b in zip(cpu, gpu, strict=True):
        assert b[0].device.type == "cuda"
        assert torch.equal(a[2], b[2].cpu()) and torch.allclose(a[0], b[0].cpu(), atol=1e-6)
