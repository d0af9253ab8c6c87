"""Pieces every ``polyscale`` command shares: the one-line-error parser, argparse value types, flag groups.

:class:`OneLineParser` also reads flags the way users of nanoGPT, diffusers, k-diffusion or PyG write them:
``--n_layer`` is ``--n-layer``, and a name from those systems (``--learning_rate``) becomes ours (``--lr``)
through :data:`polyscale.config.KNOWN_ALIASES`. An unknown flag gets a did-you-mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn, TypeVar, overload

from polyscale.config import suggest

_N = TypeVar("_N")

EXIT_ERROR = 2  # for usage errors and for errors the pipelines report
EXIT_INTERNAL = 1  # an unexpected exception (a bug, or a failure polyscale does not know how to explain)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention)

Handler = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block) pointing at ``--help``.

    ``add_subparsers`` builds subcommand parsers of the same class, so ``polyscale sample --dim 4`` reports as
    ``polyscale sample: error: argument --dim: invalid choice: 4 (choose from 1, 2, 3) (see polyscale sample
    --help)``. Each parser rewrites the long flags it is given (:meth:`normalise`) before parsing them.
    """

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())  # argparse messages may hold newlines
        self.exit(EXIT_ERROR, f"{self.prog}: error: {line} (see {self.prog} --help)\n")

    # the overloads of argparse.ArgumentParser.parse_known_args, so that the override keeps its type
    @overload
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: None = None
    ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(self, args: Iterable[str] | None, namespace: _N) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self.normalise(argv), namespace)

    def long_flags(self) -> list[str]:
        """This parser's ``--flags``, hidden ones included."""
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def normalise(self, argv: Sequence[str]) -> list[str]:
        """``--a_b[=v]`` -> ``--a-b[=v]``, then a known alias of another system -> our flag; stops at ``--``."""
        flags, out = set(self.long_flags()), list[str]()
        for i, token in enumerate(argv):
            if token == "--":
                return out + list(argv[i:])
            out.append(_rename(token, flags) if token.startswith("--") else token)
        return out

    # dotted keys of the configuration a command's --set overrides (e.g. "train.lr"), set by the command:
    # an unknown flag that names one of them is answered with the --set spelling
    config_keys: Sequence[str] = ()

    def unknown_flag_hint(self, extras: Sequence[str]) -> str:
        """``"; did you mean --lr?"`` for the first unknown ``--flag`` in ``extras`` that resembles one of ours,
        or ``"; did you mean --set train.lr=VALUE?"`` when it names a key of the command's configuration."""
        for token in extras:
            if token.startswith("--"):
                name = token.partition("=")[0][2:].replace("-", "_")
                ours = [f[2:].replace("-", "_") for f in self.long_flags() if f != "--help"]
                match = suggest(name, ours)
                if match is not None:
                    return f"; did you mean --{match.replace('_', '-')}?"
                leaves = {key.rpartition(".")[2]: key for key in reversed(self.config_keys)}
                leaf = suggest(name, list(leaves))
                if leaf is not None:
                    return f"; did you mean --set {leaves[leaf]}=VALUE?"
        return ""


def _rename(token: str, flags: set[str]) -> str:
    name, sep, value = token.partition("=")
    name = name.replace("_", "-")
    if name not in flags:
        match = suggest(name[2:].replace("-", "_"), [f[2:].replace("-", "_") for f in flags], close=False)
        name = f"--{match.replace('_', '-')}" if match is not None else name
    return f"{name}{sep}{value}"


def config_keys(config_class: type) -> list[str]:
    """Every dotted key of a (nested) dataclass configuration, e.g. ``["model.dims", ..., "train.lr", ...]``."""
    keys = []
    for f in dataclasses.fields(config_class):
        inner = f.type if isinstance(f.type, type) else None
        if inner is None and isinstance(f.type, str):
            inner = typing.get_type_hints(config_class).get(f.name)
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            keys += [f"{f.name}.{k}" for k in config_keys(inner)]
        else:
            keys.append(f.name)
    return keys


INT64_MAX = 2**63 - 1  # integer flags end up in tensors' sizes and in seeds: 64-bit integers


def _integer(text: str, expected: str) -> int:
    """``text`` as an integer: plain digits (``1000000000``, ``1_000``) or a whole number in decimal or scientific
    notation (``1e9``, ``2.0e3``); anything else, or a value outside the 64-bit range, is an
    ``ArgumentTypeError`` that says what was ``expected`` and what arrived."""
    try:
        value = int(text)
    except ValueError:
        value = _whole_number(text, expected)
    if abs(value) > INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"expected {expected}, got {text!r}, beyond the 64-bit integer range (|value| <= {INT64_MAX})"
        )
    return value


def _whole_number(text: str, expected: str) -> int:
    """A number in decimal or scientific notation that is whole, as an int (one beyond int64 when it has more
    than 19 digits: never expanded)."""
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not number.is_finite():
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if number.adjusted() > 18:  # 10^19 or more
        return INT64_MAX + 1
    if number != number.to_integral_value():
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r} (not a whole number)")
    return int(number)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum`` (``1e9`` style whole numbers too, see
    :func:`_integer`) with a message naming what arrived."""

    def parse(text: str) -> int:
        value = _integer(text, f"an integer >= {minimum}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def any_int(text: str) -> int:
    """An argparse ``type`` for any 64-bit integer (``1e9`` style whole numbers too), with a message naming what
    arrived."""
    return _integer(text, "an integer")


def _finite(text: str, expected: str) -> float:
    """``text`` as a finite float, else an ``ArgumentTypeError`` saying what was ``expected``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected {expected}, got {text!r} (NaN and infinities are refused)"
        )
    return value


def finite_float(text: str) -> float:
    """An argparse ``type`` for any finite number (NaN and +-inf are refused), with a message naming what
    arrived. Use it wherever a flag would otherwise be ``type=float``."""
    return _finite(text, "a finite number")


any_float = finite_float  # the earlier name


def positive_float(text: str) -> float:
    """An argparse ``type`` for a finite number > 0."""
    value = _finite(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type`` for a finite number >= 0."""
    value = _finite(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value:g}")
    return value


def float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers in ``(low, high]``, with a message naming what arrived."""

    def parse(text: str) -> float:
        value = _finite(text, f"a number in ({low}, {high}]")
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"expected a number in ({low}, {high}], got {value}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def add_command(
    sub: argparse._SubParsersAction, name: str, func: Handler, help: str, *, config: type | None = None
) -> argparse.ArgumentParser:
    """A subcommand ``name`` running ``func``; ``command_parser`` reports unrecognised flags in its name, and
    names the ``--set`` key of ``config`` (the command's configuration dataclass) that a stray flag means."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=func, command_parser=p)
    add_debug(p, default=argparse.SUPPRESS)  # also after the command: polyscale sample --debug ...
    if config is not None and isinstance(p, OneLineParser):
        p.config_keys = config_keys(config)
    return p


DEBUG_HELP = (
    "on failure, show Python's full traceback instead of the one-line message (or set POLYSCALE_DEBUG=1)"
)


def add_debug(p: argparse.ArgumentParser, *, default: Any = False) -> None:
    """``--debug``: failures propagate with their traceback (see :mod:`polyscale.cli.main`)."""
    p.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)


def add_device(
    p: argparse.ArgumentParser,
    help: str = "auto: CUDA when present (default auto)",
    default: str | None = "auto",
) -> None:
    """``--device``, its choices from :data:`polyscale.devices.DEVICES` (``default=None``: a preset's value)."""
    from polyscale.devices import DEVICES

    p.add_argument("--device", default=default, choices=list(DEVICES), help=help)


def add_seed(
    p: argparse.ArgumentParser, help: str = "random seed (default 0)", default: int | None = 0
) -> None:
    """``--seed`` (``default=None``: a preset's value)."""
    p.add_argument("--seed", type=any_int, default=default, help=help)


NO_RESUME = (
    "start afresh even where --output-dir holds a checkpoint; the earlier run is kept aside (.previous-run/) "
    "until the new run's first checkpoint"
)


def add_run_dir(p: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """``--output-dir`` and ``--no-resume``: where a run writes, and whether it starts afresh there."""
    p.add_argument("--output-dir", required=required, default=None, help=help)
    p.add_argument("--no-resume", action="store_true", help=NO_RESUME)


def add_overrides(p: argparse.ArgumentParser, *, metavar: str, help: str) -> None:
    """``--set KEY=VALUE``, repeatable: dotted overrides of the experiment's configuration."""
    p.add_argument("--set", action="append", default=[], metavar=metavar, help=help)


def add_force(p: argparse.ArgumentParser, what: str = "run") -> None:
    """``--force``: go on when the up-front memory estimate exceeds what is available (a warning instead)."""
    p.add_argument(
        "--force",
        action="store_true",
        help=f"{what} even when the estimated memory exceeds what is available (warn instead of refusing)",
    )


def add_allow_change(p: argparse.ArgumentParser, changeable: Sequence[str]) -> None:
    """``--allow-change KEY``, repeatable: settings a resumed run may change (those in ``changeable``)."""
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="resume even though KEY differs from the saved run's settings (repeatable); keys that may: "
        f"{', '.join(changeable) or 'none'} (how far and how verbosely to train may always change)",
    )
