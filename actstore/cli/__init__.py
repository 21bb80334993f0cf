"""The `actstore` command: a thin shell over the Python API.

Each command group lives in its own module exposing `register(subparsers)`; each command's
handler takes the parsed arguments and returns an exit code. Library errors become one line on
stderr and exit code 2 here, in one place; so does a model command (ingest, train, eval, patch,
ablate, a text task's dataset) on a reader-only install, naming the extra to install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator

from actstore import __version__
from actstore.cli.args import OneLineParser, tolerate_undecodable_paths
from actstore.errors import MODELS_EXTRA, ActstoreError, needs_models_extra

# modules under actstore.cli that register commands, in help order
COMMAND_MODULES = ["dataset", "models", "ingest", "inspect", "sql", "dla", "attention", "neurons", "probe", "compare",
                   "weights", "directions", "interventions", "charts", "unlock"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="actstore",
        description="Run a model once over a task dataset, store the activations, query them offline.",
    )
    parser.add_argument("--version", action="version", version=f"actstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a missing module is an ImportError, never a command silently dropped
        importlib.import_module(f"actstore.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    tolerate_undecodable_paths()
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as e:  # a usage error (one line, printed) or --help / --version
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        with _query_progress(), _warnings_as_lines(args.command):
            return int(args.handler(args) or 0)
    except BrokenPipeError:  # e.g. `actstore sql ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ModuleNotFoundError as e:  # a model command (ingest, train, patch, ...) on a reader-only install
        if not needs_models_extra(e):
            raise
        return _fail(args.command, f"this command needs the model extra: {MODELS_EXTRA}")
    except ActstoreError as e:
        return _fail(args.command, str(e))
    except MemoryError:
        return _fail(args.command, "out of memory; ask for fewer examples or rows (--n, --limit, --where)")
    except OSError as e:  # an OS refusal no command anticipated: still one line, naming the file
        where = f" ({e.filename!r})" if e.filename else ""
        return _fail(args.command, f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        print(f"actstore {args.command}: interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; stray arguments are reported by the command's own parser (`actstore CMD: error:`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = getattr(args, "command", None)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        target = subparsers.choices.get(command, parser) if command else parser
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def one_line(message: str) -> str:
    """A message's non-empty lines joined by '; ' (what every error and warning line shows)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _fail(command: str, message: str) -> int:
    """Print `message` as the one error line of `command` and return its exit status, 2."""
    text = one_line(message)
    print(f"actstore {command}: error: {text}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Library warnings (a store whose ingest has not finished, ...) as one `warning:` line each on stderr."""
    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        text = one_line(str(message))
        print(f"actstore {command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=ResourceWarning)  # a file an import cut short by Ctrl-C left open
        warnings.showwarning = show
        yield


def _query_progress() -> contextlib.AbstractContextManager[None]:
    """Progress bars for streamed queries when stderr is a terminal (scripts and pipes stay quiet)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from actstore.query.progress import progress

    return progress()


def parse_params(pairs: list[str] | None) -> dict[str, object]:
    """`['digits=4', 'name=x']` -> {'digits': 4, 'name': 'x'}; values parsed as int, float, bool or str."""
    from actstore.errors import InvalidParameterError

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--param expects KEY=VALUE, got {pair!r}")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        out[key] = value
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
