import dataclasses

import pytest
import torch

from depthlab.data import Dataset, available, channel_stats, check, load, loader_options, split_indices
from depthlab.errors import DataError, SpecError


def test_available_and_unknown_name():
    assert available() == ["cifar10", "fashion_mnist", "mnist", "synthetic"]
    with pytest.raises(SpecError) as err:
        load("imagenet")
    assert err.value.field == "dataset" and "cifar10, fashion_mnist, mnist, synthetic" in str(err.value)


def test_unknown_option_is_refused():
    with pytest.raises(SpecError, match="synthetic option: got 'n_trian'; allowed: n_train, n_test"):
        load("synthetic", n_trian=5)
    assert "sources" in loader_options("mnist") and "url" in loader_options("cifar10")


def test_synthetic_shapes_and_determinism():
    a = load("synthetic", n_train=100, n_test=40, shape=(3, 8, 12), num_classes=4, seed=3)
    assert isinstance(a, Dataset) and a.source == "generated" and a.flip_ok
    assert a.train_x.shape == (100, 3, 8, 12) and a.train_x.dtype == torch.uint8
    assert a.test_x.shape == (40, 3, 8, 12) and a.train_y.dtype == torch.int64
    assert (a.in_channels, a.input_size, a.n_train, a.num_classes) == (3, 8, 100, 4)
    assert torch.bincount(a.train_y).tolist() == [25, 25, 25, 25]
    b = load("synthetic", n_train=100, n_test=40, shape=(3, 8, 12), num_classes=4, seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load("synthetic", n_train=100, n_test=40, shape=(3, 8, 12), num_classes=4, seed=4)
    assert not torch.equal(a.train_x, c.train_x)
    # The test split does not depend on the train size.
    d = load("synthetic", n_train=50, n_test=40, shape=(3, 8, 12), num_classes=4, seed=3)
    assert torch.equal(a.test_x, d.test_x)


def test_synthetic_is_learnable():
    ds = load("synthetic", n_train=500, n_test=200, seed=1)
    x, xt = ds.train_x.flatten(1).float(), ds.test_x.flatten(1).float()
    centroids = torch.stack([x[ds.train_y == k].mean(0) for k in range(10)])
    pred = torch.cdist(xt, centroids).argmin(1)
    assert (pred == ds.test_y).float().mean() > 0.9  # nearest class mean; chance is 0.1


def test_synthetic_bad_options():
    with pytest.raises(SpecError, match="shape"):
        load("synthetic", shape=(28, 28))
    with pytest.raises(SpecError, match="num_classes"):
        load("synthetic", num_classes=1)


def test_val_split_deterministic_and_disjoint():
    full = load("synthetic", n_train=200)
    a = load("synthetic", n_train=200, val_split=50)
    b = load("synthetic", n_train=200, val_split=0.25)  # the same 50
    assert (a.n_train, len(a.val_x)) == (150, 50)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    val_idx, train_idx = split_indices(200, 50)
    assert set(val_idx.tolist()).isdisjoint(train_idx.tolist())
    assert sorted(val_idx.tolist() + train_idx.tolist()) == list(range(200))
    assert torch.equal(a.val_x, full.train_x[val_idx]) and torch.equal(a.train_y, full.train_y[train_idx])
    # The validation set does not depend on the subset.
    c = load("synthetic", n_train=200, val_split=50, train_subset=20)
    assert torch.equal(c.val_x, a.val_x)


def test_train_subset_deterministic_and_nested():
    a = load("synthetic", n_train=200, val_split=20, train_subset=30)
    b = load("synthetic", n_train=200, val_split=20, train_subset=30)
    assert a.n_train == 30 and torch.equal(a.train_x, b.train_x)
    small = set(split_indices(200, 20, 30)[1].tolist())
    large = set(split_indices(200, 20, 60)[1].tolist())
    val = set(split_indices(200, 20)[0].tolist())
    assert small < large and not (large & val)
    assert split_indices(200, 0, 30)[1].tolist() != list(range(30))  # a shuffled pick, not the first 30
    with pytest.raises(SpecError) as err:
        load("synthetic", n_train=200, val_split=20, train_subset=181)
    assert err.value.field == "train_subset" and "180" in str(err.value)


@pytest.mark.parametrize("bad", [-1, 200, 1.5, -0.1, True, "10"])
def test_val_split_bad(bad):
    with pytest.raises(SpecError, match="val_split"):
        split_indices(200, bad)


def test_channel_stats_match_float():
    x = torch.randint(0, 256, (64, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert mean == pytest.approx(f.mean((0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(f.std((0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_stats_are_of_the_train_split():
    ds = load("synthetic", n_train=200, val_split=100)
    assert ds.mean == channel_stats(ds.train_x)[0]


def test_to_and_repr():
    ds = load("synthetic", n_train=20, n_test=10)
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.train_x, ds.train_x)
    assert "synthetic" in repr(ds) and "train=20" in repr(ds)


def test_check_catches_bad_labels():
    ds = load("synthetic", n_train=20, n_test=10)
    check(ds, sizes=(20, 10))
    with pytest.raises(DataError, match="expected 30 and 10"):
        check(ds, sizes=(30, 10))
    bad = dataclasses.replace(ds, test_y=ds.test_y + 10)
    with pytest.raises(DataError, match="test: labels span"):
        check(bad)
