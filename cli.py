"""Command-line pieces shared by train.py and hyperband.py."""

import argparse


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
