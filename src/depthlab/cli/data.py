"""`depthlab data list` and `depthlab data verify [NAME]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from depthlab.data import registry
from depthlab.data.download import default_data_dir

if TYPE_CHECKING:
    import torch

ROOT_HELP = (
    "directory holding the dataset's files, or a data directory with one subdirectory per dataset "
    "(default: $DEPTHLAB_DATA or ~/.cache/depthlab, currently %(default_dir)s)"
)


def register(subparsers) -> None:
    root_help = ROOT_HELP % {"default_dir": default_data_dir()}
    data = subparsers.add_parser(
        "data",
        help="list and verify the datasets",
        description="Datasets resolve offline first (a verified cache, or the copy an installed package ships), "
        "then download with a checksum.",
    )
    data.set_defaults(func=lambda args: data.print_help() or 0)
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")

    lst = actions.add_parser(
        "list",
        help="each dataset: shape, classes, sizes, and whether (and from where) it is available offline",
        description="List the datasets, their shape and classes, and where each would be loaded from offline.",
    )
    lst.add_argument("--root", type=Path, help=root_help)
    lst.set_defaults(func=cmd_list)

    verify = actions.add_parser(
        "verify",
        help="load a dataset and check its counts, shapes and labels",
        description="Load a dataset (all that are available offline when NAME is omitted), check counts, shapes "
        "and label ranges, and print counts per split, label counts and the train pixel mean. Exits 0 when "
        "everything is fine, 2 with the file and the fix otherwise.",
    )
    verify.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(registry.available())}")
    verify.add_argument("--root", type=Path, help=root_help)
    verify.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading a dataset that is not found offline"
    )
    verify.set_defaults(func=cmd_verify)

    register_corrupt(actions, root_help)


def _not_offline(ent: registry.Entry) -> str:
    """What `data list` says of a dataset with no offline copy: how to get one."""
    ways = [f"`{p.install}`" for p in ent.packages] + ([f"downloads from {ent.remote[0]}"] if ent.remote else [])
    return f"no ({'; or '.join(ways)})"


def cmd_list(args) -> int:
    from depthlab.data.datasets import locate, offline_problem

    rows = [("name", "shape", "classes", "train", "test", "offline")]
    for name in registry.available():
        ent = registry.entry(name)
        where = locate(name, args.root)
        problem = offline_problem(name, args.root) if where else None
        if problem:  # listed as available, it would fail when loaded
            offline = f"no: corrupt copy ({problem}); `depthlab data verify {name}` says more"
        else:
            offline = f"yes ({where})" if where else _not_offline(ent)
        rows.append((name, "x".join(map(str, ent.shape)), str(ent.num_classes), str(ent.sizes[0]),
                     str(ent.sizes[1]), offline))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _label_counts(y: torch.Tensor, num_classes: int) -> str:
    import torch

    counts = torch.bincount(y.cpu(), minlength=num_classes).tolist()
    return " ".join(f"{k}:{c}" for k, c in enumerate(counts))


def verify_one(name: str, root: Path | None, download: bool) -> None:
    from depthlab.data.datasets import check, load

    ds = load(name, root=root, download=download)
    check(ds, sizes=registry.entry(name).sizes)
    c, h, w = ds.train_x.shape[1:]
    print(f"{name} ({ds.source}): {c}x{h}x{w}, {ds.num_classes} classes, flip {'ok' if ds.flip_ok else 'refused'}")
    for split in ("train", "val", "test"):
        y = getattr(ds, f"{split}_y")
        labels = f"  labels {_label_counts(y, ds.num_classes)}" if len(y) else ""
        print(f"  {split:<5} {len(y):>6}{labels}")
    mean = ", ".join(f"{m * 255:.2f}" for m in ds.mean)
    std = ", ".join(f"{s * 255:.2f}" for s in ds.std)
    print(f"  train pixel mean {mean} (0-255 scale), std {std}")
    print("  ok")


def cmd_verify(args) -> int:
    from depthlab.data.datasets import locate

    if args.name:
        verify_one(args.name, args.root, not args.no_download)
        return 0
    for name in registry.available():
        if locate(name, args.root) is None:
            print(f"{name}: skipped, not available offline (run `depthlab data verify {name}` to download it)")
            continue
        verify_one(name, args.root, download=False)
    return 0


# -- corrupted test sets (depthlab.data.corrupt) -----------------------------------------------------------------


def register_corrupt(actions, root_help: str) -> None:
    corrupt = actions.add_parser(
        "corrupt", help="the corruption suites (MNIST-C, CIFAR-10-C) and the cached corrupted test sets",
        description="Corrupted test sets are made offline (numpy, scipy, Pillow) by `depthlab shift`, cached as "
        "uint8 with a sha256 checksum. `list` shows each suite's corruptions, their parameters per severity, "
        "whether they can be made here, and the cached sets; `verify` checks every cached set's checksum.")
    corrupt.set_defaults(func=lambda args: corrupt.print_help() or 0)
    sub = corrupt.add_subparsers(dest="corrupt_command", metavar="ACTION")
    lst = sub.add_parser("list", help="corruptions per suite, and the cached sets",
                         description="Each corruption of the suite: its parameter at severities 1-5 (from the "
                         "reference generators), MNIST-C's benchmark severity, and whether it can be made here "
                         "(a few need OpenCV, the `corrupt` extra, or frost's texture files); then the cached sets.")
    suites = ", ".join(f"{name} ({registry.entry(name).suite})" for name in registry.with_suite())
    lst.add_argument("dataset", nargs="?", metavar="DATASET", help=f"a dataset with a suite: {suites}; default: "
                     "every suite")
    lst.add_argument("--root", type=Path, help=root_help)
    lst.set_defaults(func=cmd_corrupt_list)
    ver = sub.add_parser("verify", help="check the checksum of every cached corrupted set",
                         description="Check every cached corrupted set against its sha256; exits 2 naming the "
                         "damaged ones (delete them: `depthlab shift` makes them again).")
    ver.add_argument("--root", type=Path, help=root_help)
    ver.set_defaults(func=cmd_corrupt_verify)


def _param_text(value) -> str:
    if value is None:
        return "-"
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) > 4 and all(isinstance(v, float) for v in value):  # zoom factors
            return f"{value[0]:g}..{value[-1]:g} ({len(value)})"
        return "(" + ", ".join(_param_text(v) for v in value) + ")"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def cmd_corrupt_list(args) -> int:
    from depthlab.data import corrupt
    from depthlab.data.corrupt_cache import cache_dir, cached_sets

    suites = [corrupt.suite_of(args.dataset)] if args.dataset else list(corrupt.SUITES)
    for suite in suites:
        source = ("google-research/mnist-c corruptions.py" if suite == "mnist-c"
                  else "hendrycks/robustness make_cifar_c.py (15 + 4 extra)")
        print(f"{suite} ({source})")
        rows = [("corruption", "severities 1-5", "mnist-c", "here")]
        for name, spec in corrupt.SUITES[suite].items():
            levels = "no levels (severity 0)" if spec.levels is None else \
                " | ".join(_param_text(p) for p in spec.levels)
            bench = str(corrupt.MNISTC_SEVERITY[name]) if suite == "mnist-c" else "-"
            why = [w for w in (spec.needs(s) for s in spec.severities()) if w]
            here = "yes" if not why else ("no: " if len(why) == len(spec.severities()) else "partly: ") + why[0]
            rows.append((name, levels, bench, here))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    sets = cached_sets(args.root)
    print(f"cached sets in {cache_dir(args.root)}: {len(sets)}"
          + (f" ({sum(bool(s['problem']) for s in sets)} damaged; `depthlab data corrupt verify` names them)"
             if any(s["problem"] for s in sets) else ""))
    return 0


def cmd_corrupt_verify(args) -> int:
    from depthlab.data.corrupt_cache import cache_dir, verify_cache

    sets = verify_cache(args.root)  # a damaged set is a DataError: exit 2 with the names and the fix
    print(f"{len(sets)} cached corrupted set(s) in {cache_dir(args.root)}: every checksum matches")
    return 0
