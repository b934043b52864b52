"""The `finecaption` command line's one error path and its argument types.

Every bad argument, file or model a command meets ends the same way: one line `finecaption: error: ...` on stderr
and exit status 2, never a traceback (set FINECAPTION_TRACEBACK=1 to see one). Nothing here imports torch, so the
engines' subcommands use these types too.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "finecaption"
EXIT_ERROR = 2  # what argparse itself exits with on a usage error
MAX_MESSAGE = 2000  # a message may quote user input; a line stays readable


class CommandError(Exception):
    """A bad argument or input that a command refuses; the message names the problem and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises CommandError instead of printing its usage and exiting, so that usage errors take the
    same path (and print the same one line) as every other error. Subcommand parsers inherit the class."""

    def error(self, message):
        raise CommandError(f"{message} (see `{self.prog} --help`)")


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    # Errors of our own making and the OS's explain themselves; anything else is named by its type.
    if not isinstance(error, (CommandError, ValueError, OSError, ImportError)) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ..."


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse `argv` and run the chosen command (`args.func`); the only place a command's error is printed."""
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one error path: whatever went wrong, one line and exit 2
        if os.environ.get("FINECAPTION_TRACEBACK"):
            raise
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr, flush=True)
        return EXIT_ERROR


# ---- argument types: each refuses a bad value while the arguments are parsed ------------------------------------
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def int_between(minimum: int, maximum: int):
    def parse(text: str) -> int:
        value = _int(text)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be within {minimum}..{maximum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def boolean(text: str) -> bool:
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text[:40]!r}")
    return value


def names_from(choices: tuple[str, ...] | None = None):
    """A comma-separated, non-empty list of distinct names (out of `choices`, when given)."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(","))
        if not all(names):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} has an empty name; separate names by single commas")
        unknown = [name for name in names if choices is not None and name not in choices]
        if unknown:
            shown = ", ".join(repr(name[:40]) for name in unknown[:5])
            raise argparse.ArgumentTypeError(f"unknown {shown}; choose from {','.join(choices)}")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} names one twice")
        return names
    return parse


def input_file(text: str) -> Path:
    """An existing, non-empty regular file."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    if path.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text} is empty (0 bytes)")
    return path


def _check_creatable(path: Path, text: str) -> None:
    """The nearest existing folder above `path` must be a folder we may write in."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {text}: no permission to write in {parent}")


def output_dir(text: str) -> Path:
    """A folder to write into: an existing folder, or a path that can be created as one (not an existing file)."""
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (it is created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"no permission to write in {text}")
        return path
    _check_creatable(path, text)
    return path


def output_file(text: str) -> Path:
    """A file to write: not an existing folder; its folder is created if missing."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"no permission to write {text}")
        return path
    _check_creatable(path, text)
    return path
