"""The ``rtune`` command line: a thin shell over the Python API.

Each sub-command lives in ``rtune/commands/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are discovered here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, commands
from .errors import RtuneError
from .extras import MissingExtra, extra_for_module


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their own line breaks (examples stay readable); an option's help
    shows its default when there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default  # 0 and 0.0 are shown: they equal False, but are not it
        if ("%(default)" in text or default is None or default is False
                or default in ([], "", argparse.SUPPRESS)
                or not action.option_strings or "default" in text.lower()):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtune", description="Reflection-Tuning: recycle, score, select, train, judge, "
        "report.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"rtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = getattr(module, "NAME", info.name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__ or module.HELP,
                           epilog=getattr(module, "EXAMPLES", None),
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as e:
        extra = extra_for_module(e.name)
        if extra is None:
            raise
        print(f"rtune {args.command}: error: {MissingExtra(f'rtune {args.command}', extra, e.name)}",
              file=sys.stderr)
        return 2
    except RtuneError as e:
        print(f"rtune {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"rtune {args.command}: interrupted; finished work is saved, rerun to continue.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
