"""Click options shared by the commands that convert a model: ``convert`` and ``train-artifacts``.

The commands differ in their precision choices and in their default target, so those two options
are made by functions that take them; the node-selection options are the same in both.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import click

Command = TypeVar("Command", bound=Callable[..., object])


def precision_option(
    choices: Sequence[str], *, help: str, default: str | None = "fp16"
) -> Callable[[Command], Command]:
    """``--precision``, one of ``choices``; ``default=None``: not given (a policy file may set it)."""
    return click.option(
        "--precision",
        type=click.Choice(choices),
        default=default,
        show_default=default is not None,
        help=help,
    )


def target_option(default: str | None, *, choices: Sequence[str] | None) -> Callable[[Command], Command]:
    """``--target`` with the command's default (None: not given, a policy file may set it);
    ``choices=None`` takes any name (the core checks it)."""
    return click.option(
        "--target",
        type=None if choices is None else click.Choice(choices),
        default=default,
        show_default=default is not None,
        help="Execution target: a node goes low precision only where the target has a kernel for it."
        + ("" if default is not None else " [default: cuda, or the policy file's]"),
    )


def node_selection_options(command: Command) -> Command:
    """``--allow-op``, ``--block-op``, ``--block-node`` and ``--policy``: which nodes may go low precision."""
    options = [
        click.option(
            "--allow-op",
            "allow_ops",
            multiple=True,
            metavar="OP",
            help="Run OP in low precision (OpType or domain::OpType).",
        ),
        click.option("--block-op", "block_ops", multiple=True, metavar="OP", help="Keep OP in FP32."),
        click.option(
            "--block-node",
            "block_nodes",
            multiple=True,
            metavar="NAME|REGEX",
            help="Keep matching nodes in FP32.",
        ),
        click.option(
            "--policy", type=click.Path(dir_okay=False, path_type=pathlib.Path), help="TOML policy file."
        ),
    ]
    for option in reversed(options):  # click lists options in the order their decorators are written
        command = option(command)
    return command
