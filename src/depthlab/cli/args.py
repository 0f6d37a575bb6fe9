"""argparse types shared by the commands: a bad number is refused with the value and the rule."""

from __future__ import annotations

import argparse
import textwrap

from depthlab import precision


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that gives each option's default, except a flag's (`--no-complexity` is off unless given, and its
    stored default, True: complexity on, read as "(default: True)" beside the flag that turns it off) and an
    unset one's ("(default: None)" says nothing its help does not)."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:  # a flag; an option whose help says what unset means
            return action.help
        return super()._get_help_string(action)


def int_between(text: str, low: int, high: int | None = None) -> int:
    """`text` as an integer in [low, high] (no upper bound when high is None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
    return value


def positive_int(text: str) -> int:
    return int_between(text, 1)


def non_negative_int(text: str) -> int:
    return int_between(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_precision(parser, help: str) -> None:
    """The `--precision` option of the commands that train or evaluate (`depthlab.precision`; default auto)."""
    parser.add_argument("--precision", default="auto", choices=precision.PRECISIONS, help=help)


def add_layout(parser, default: str = "auto", why: str = "") -> None:
    """The `--layout` option of the commands that train (`depthlab.choices.LAYOUTS`)."""
    from depthlab.choices import LAYOUTS

    parser.add_argument("--layout", default=default, choices=LAYOUTS,
                        help="the activations' memory layout in training. auto: channels_last on CUDA, in bf16 and "
                        "for lk blocks; NCHW for float32 on a CPU, whose weights are then the same bit for bit on "
                        "one intra-op thread or two. channels_last trains float32 1.1-3x faster on a CPU; its "
                        "weights differ by round-off with the thread count. Recorded per run (channels_last in its "
                        "environment; not part of its identity)" + why)


def described(values: dict[str, str], width: int = 104) -> str:
    """A registry's values and what each means, one under the other with the meanings aligned (for a raw
    description: `depthlab.choices` declares both, so a new value shows up here by itself)."""
    indent = " " * (2 + max(map(len, values)) + 2)
    return "\n".join(textwrap.fill(text, width, initial_indent=f"  {name}".ljust(len(indent)),
                                   subsequent_indent=indent, break_on_hyphens=False)
                     for name, text in values.items())
