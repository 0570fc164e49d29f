"""The ``mpcompile`` command line. Each subcommand lives in its own module under ``mpcompile/commands``."""

from __future__ import annotations

import sys

import click

from mpcompile.errors import ExitCode, MpcompileError
from mpcompile.text import printable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpcompile")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Mixed-precision (FP16/BF16) compiler for ONNX models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register_commands() -> None:
    # Each command module is imported here; heavy dependencies stay inside the command bodies.
    from mpcompile.commands.convert import convert_command
    from mpcompile.commands.report import report_command
    from mpcompile.commands.targets import targets_command
    from mpcompile.commands.train_artifacts import train_artifacts_command
    from mpcompile.commands.validate import validate_command

    for command in (
        convert_command,
        validate_command,
        report_command,
        targets_command,
        train_artifacts_command,
    ):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        returned = cli.main(args=args, prog_name="mpcompile", standalone_mode=False)
    except MpcompileError as exc:
        if debug:
            raise
        _error_line(exc.message)
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:  # click's own three lines (usage, hint, error) made one
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _error_line(exc.format_message() + hint)
        return exc.exit_code
    except click.ClickException as exc:
        _error_line(exc.format_message())
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # an internal bug: one line unless --debug
        if debug:
            raise
        click.echo(
            printable(
                " ".join(f"internal error ({type(exc).__name__}): {exc}".split())
                + "  (rerun with --debug for a traceback)"
            ),
            err=True,
        )
        return int(ExitCode.INTERNAL)
    # In non-standalone mode click returns a command's ctx.exit(code) instead of raising.
    return returned if isinstance(returned, int) else int(ExitCode.OK)


def _error_line(message: str) -> None:
    """``error: MESSAGE`` as one line on stderr; the message may quote model strings, so it is
    made printable (control and bidi characters escaped) after its line breaks are joined."""
    click.echo(f"error: {printable(' '.join(message.split()))}", err=True)


if __name__ == "__main__":
    sys.exit(main())
