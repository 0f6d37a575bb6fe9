"""`depthlab data list` and `depthlab data verify [NAME]`."""

from __future__ import annotations

from pathlib import Path

import torch

from depthlab.data import available, check, default_data_dir, load, locate
from depthlab.data.datasets import entry, offline_problem

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
    verify.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(available())}")
    verify.add_argument("--root", type=Path, help=root_help)
    verify.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading a dataset that is not found offline"
    )
    verify.set_defaults(func=cmd_verify)


def cmd_list(args) -> int:
    rows = [("name", "shape", "classes", "train", "test", "offline")]
    for name in available():
        ent = entry(name)
        where = locate(name, args.root)
        problem = offline_problem(name, args.root) if where else None
        if problem:  # listed as available, it would fail when loaded
            offline = f"no: corrupt copy ({problem}); `depthlab data verify {name}` says more"
        else:
            offline = f"yes ({where})" if where else f"no (downloads from {ent.remote})"
        rows.append((name, "x".join(map(str, ent.shape)), str(ent.num_classes), str(ent.sizes[0]),
                     str(ent.sizes[1]), offline))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _label_counts(y: torch.Tensor, num_classes: int) -> str:
    counts = torch.bincount(y.cpu(), minlength=num_classes).tolist()
    return " ".join(f"{k}:{c}" for k, c in enumerate(counts))


def verify_one(name: str, root: Path | None, download: bool) -> None:
    ds = load(name, root=root, download=download)
    check(ds, sizes=entry(name).sizes)
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
    if args.name:
        verify_one(args.name, args.root, not args.no_download)
        return 0
    for name in available():
        if locate(name, args.root) is None:
            print(f"{name}: skipped, not available offline (run `depthlab data verify {name}` to download it)")
            continue
        verify_one(name, args.root, download=False)
    return 0
