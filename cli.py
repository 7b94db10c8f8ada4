"""Command-line pieces shared by train.py and hyperband.py."""

import argparse
import signal


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless the help text already describes it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def reject_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error for a flag given "--" as its value.

    argparse (as of Python 3.11) turns `--flag=--` into an empty list instead of rejecting it, and
    none of this project's flags takes a list.
    """
    for name, value in vars(args).items():
        if isinstance(value, list):
            parser.error(f"invalid --{name.replace('_', '-')}: missing value")


class Stopped(Exception):
    """Raised by the SIGTERM and SIGINT handlers, so that a stop goes through the normal clean-up paths."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stopped_on_signals() -> None:
    """Turn the first SIGTERM or SIGINT into a Stopped exception and ignore any later one.

    Ignoring later signals keeps a second Ctrl-C from cutting the clean-up short (stopping trials,
    removing a temporary file, releasing a lock).
    """
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
