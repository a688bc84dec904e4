"""The ``compresskit`` command group: options every command shares (-v, -q) and how any
failure ends: one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import math
import os
import traceback
from typing import Any

import click

from compresskit import interrupts
from compresskit._version import __version__
from compresskit.errors import CompressKitError, first_line

MAX_SECONDS = 3600.0  # a time cap per measurement; more is a typo


class Seconds(click.FloatRange):
    """A time in seconds between the bounds: NaN slips past a range check, so refuse it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


TRUST_FACTORY_HELP = (
    "Allow a compresskit model file (or teacher) to run the architecture factory it "
    "records (code named in the file); without it, name the factory with --arch."
)


EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130
# Under torchrun, rank 0 leaves the run's exit code here for the --nproc launcher.
EXIT_FILE_ENV = "COMPRESSKIT_EXIT_FILE"


class _Group(click.Group):
    """Every failure is one line on stderr: bad input (:class:`CompressKitError` and bad
    options) exits 2, an interrupt 130, anything else 1 (``-v`` adds the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                result = super().invoke(ctx)
            except Exception as error:  # an interrupt a library reworded is still one
                interrupts.check(error)
                raise
            interrupts.check()  # one a library swallowed whole
            return result
        except CompressKitError as error:
            _record_for_torchrun(error)
            _fail(ctx, str(error), EXIT_BAD_INPUT)
        except click.UsageError as error:  # a subcommand's options: no usage block
            _fail(ctx, error.format_message(), error.exit_code)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", EXIT_INTERRUPTED)
        except Exception as error:  # a bug: still one line, the traceback on -v
            if isinstance(error, BrokenPipeError):
                raise  # `compresskit ... | head`: click ends quietly
            _record_for_torchrun(error)
            if (ctx.obj or {}).get("verbosity", 0) > 0:
                traceback.print_exc()
            _fail(
                ctx,
                f"internal error: {first_line(error, limit=300)} (rerun with -v for the "
                "traceback, and please report it)",
                EXIT_INTERNAL,
            )


def _record_for_torchrun(error: BaseException) -> None:
    """A rank under torchrun leaves its error where the launcher reads why it failed."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from compresskit.training.distributed import record_error

        record_error(error)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo("Error: " + " ".join(message.split()), err=True)
    ctx.exit(code)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="compresskit")
@click.option("-v", "--verbose", count=True, help="More output: debug lines, tracebacks of bugs.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Compress PyTorch models (prune, distill, quantize), export to ONNX, measure.

    Exit codes: 0 success; 2 bad input; 3 a candidate missed the policy's budget; 4 a
    candidate failed (ONNX parity) or was not measured, or bench could not measure a
    model; 1 an internal error; 130 interrupted."""
    from compresskit.progress import set_verbosity

    verbosity = -1 if quiet else verbose
    ctx.obj = {"verbosity": verbosity}
    set_verbosity(verbosity)
