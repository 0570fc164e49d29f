"""The ``mpcompile`` command line. Each subcommand lives in its own module under ``mpcompile/commands``."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as an interrupt so that they clean up as Ctrl-C does."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


INTERRUPTED = 130  # 128 + SIGINT, as shells report it; SIGTERM gives 143, SIGHUP 129


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` in the block (the previous handlers are restored
    after it), so temporary files are removed as on SIGINT. Left alone where they are ignored
    (``nohup``) or outside the main thread."""

    def interrupt(number: int, _frame: object) -> None:
        raise Terminated(number)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None or signal.getsignal(number) == signal.SIG_IGN:
            continue
        try:
            previous[number] = signal.signal(number, interrupt)
        except ValueError:  # not the main thread
            break
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _interrupt_exit_code(exc: BaseException) -> int:
    """128 + the signal that interrupted: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    cause = exc if isinstance(exc, Terminated) else exc.__cause__ or exc.__context__
    return 128 + cause.number if isinstance(cause, Terminated) else INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns errors into one line and an exit code. SIGINT,
    SIGTERM and SIGHUP stop it cleanly (temporary files removed): exit 128 + the signal number."""
    args = sys.argv[1:] if argv is None else argv
    with _terminate_as_interrupt():
        try:
            return _run(args)
        except KeyboardInterrupt as exc:  # one arriving outside click's own handling
            click.echo("aborted", err=True)
            return _interrupt_exit_code(exc)


def _run(args: list[str]) -> int:
    debug = "--debug" in args
    try:
        returned = cli.main(args=args, prog_name="mpcompile", standalone_mode=False)
    except MpcompileError as exc:
        if debug:
            raise
        _error_line(exc.message)
        return int(exc.exit_code)
    except MemoryError:
        if debug:
            raise
        click.echo(
            "error: out of memory; the inputs or the model need more memory than this machine has "
            "(lower MPCOMPILE_MEMORY_LIMIT to be refused up front)",
            err=True,
        )
        return int(ExitCode.TOO_LARGE)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns any EOFError into Abort: a bug, not Ctrl-C
            if debug:
                raise exc.__cause__ from None
            click.echo(
                f"internal error (EOFError): {exc.__cause__}  (rerun with --debug for a traceback)", err=True
            )
            return int(ExitCode.INTERNAL)
        click.echo("aborted", err=True)
        return _interrupt_exit_code(exc)
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
