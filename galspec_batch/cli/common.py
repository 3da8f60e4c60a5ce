"""What every command shares: one-line errors with fixed exit codes, and the options that several
commands take (their help written once)."""

from __future__ import annotations

import functools
import signal
import sys

import click

from galspec_batch import defaults as D
from galspec_batch.errors import (
    INTERRUPTED,
    GalspecError,
    Interrupted,
    UsageError,
    first_line,
    forget_signals,
    stop_on_signal,
)
from galspec_batch.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENGINE,
    DEFAULT_MC_SAMPLES,
    ENGINE_NAMES,
    MAX_BATCH_SIZE,
    MAX_MARGIN_ARCSEC,
    MAX_MC_SAMPLES,
    PRECISIONS,
    Layout,
    PredictOptions,
)
from galspec_batch.regions import FORMS

EXIT_RUNTIME = 1  # a runtime or data error: a bad file, a failed partition, a full disk
EXIT_USAGE = 2  # a command line that cannot be used
EXIT_SIGINT = 128 + signal.SIGINT  # 130
UNCALIBRATED_NOTE = ("; UNCALIBRATED: its spreads are the network's own, not calibrated "
                     "(see galspec calibrate)")

REGION_HELP = f"Sky region (degrees; RA_MIN > RA_MAX wraps through 0): {FORMS}."


def fail(message: str, code: int) -> None:
    click.echo(f"galspec: error: {message}", err=True)
    sys.exit(code)


def _os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return first_line(exc)


class _Stopped(BaseException):
    """A signal on its way out of click, which would turn a KeyboardInterrupt into Abort."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _quiet_leftovers() -> None:
    """Keep the one-line promise after an interrupt: the semaphores of Dask workers that were
    stopped are cleaned up by multiprocessing's tracker anyway, and zarr's reads abandoned when a
    damaged chunk stops a batch are not errors of their own; neither should print."""
    import logging
    import os
    import warnings

    quiet = "ignore:resource_tracker:UserWarning"  # read by the tracker process, which starts later
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), quiet)))
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class GalspecGroup(click.Group):
    """The ``galspec`` group: every error ends as one ``galspec: error: ...`` line on stderr and
    exit 2 (usage) or 1 (runtime, data); Ctrl-C exits 130 and SIGTERM 143 after the command has
    stopped its workers and kept nothing half-written."""

    def invoke(self, ctx):  # noqa: D102 - click's dispatch
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # before click turns it into Abort, with a blank line
            raise _Stopped(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT) from None

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102 - click's entry point
        _quiet_leftovers()
        forget_signals()
        # a blocked mask is inherited across exec: a parent that leaked one would make this run deaf
        # to Ctrl-C (an ignored SIGINT is another matter: that one is the shell's choice)
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        # a SIGINT the shell set to be ignored (a background job) stays ignored
        old = {s: signal.signal(s, stop_on_signal) for s in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            code = super().main(args=args, prog_name=prog_name or "galspec", standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            path = ["galspec", *exc.ctx.command_path.split()[1:]] if exc.ctx is not None else []
            hint = f" (see `{' '.join(path)} -h`)" if path else ""
            fail(exc.format_message().rstrip(".") + hint, EXIT_USAGE)
        except click.Abort:  # click's form of a KeyboardInterrupt outside a command (e.g. a prompt)
            fail(INTERRUPTED, EXIT_SIGINT)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except _Stopped as exc:
            fail(INTERRUPTED, 128 + exc.signum)
        except (UsageError, FileExistsError) as exc:  # FileExistsError: an output needing --overwrite
            fail(first_line(exc), EXIT_USAGE)
        except GalspecError as exc:
            fail(first_line(exc), EXIT_RUNTIME)
        except OSError as exc:
            fail(_os_error(exc), EXIT_RUNTIME)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            forget_signals()
        sys.exit(code if isinstance(code, int) else 0)


def echo_report(report) -> None:
    """Print a batch's quarantined inputs (one line each, on stderr) and its summary."""
    for q in report.quarantined[:20]:
        click.echo(f"galspec: quarantined: {q.reason}", err=True)
    if len(report.quarantined) > 20:
        click.echo(f"galspec: ... and {len(report.quarantined) - 20} more", err=True)
    click.echo(report.summary())


# -- options shared by several commands ----------------------------------------------------------


def out_option(help: str, **kwargs):
    return click.option("-o", "--out", required=True, type=click.Path(), help=help, **kwargs)


def quiet_option(func):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar (the summary line stays).")(func)


def overwrite_option(what: str = "--out"):
    return click.option("--overwrite", is_flag=True, help=f"Replace an existing {what}.")


def region_option(func):
    return click.option("--region", default=None, help=REGION_HELP)(func)


_PREDICT_OPTIONS = (
    click.option("--mc-samples", type=click.IntRange(2, MAX_MC_SAMPLES), default=DEFAULT_MC_SAMPLES,
                 show_default=True, help="MC-dropout samples per galaxy."),
    click.option("--engine", type=click.Choice(ENGINE_NAMES), default=DEFAULT_ENGINE, show_default=True,
                 help="Inference engine of the CNN body."),
    click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE,
                 show_default=True, help="Cutouts per batch (a resume must keep it: CPU kernels sum by it)."),
    click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=D.SEED, show_default=True,
                 help="Run seed of the MC-dropout masks."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                 help="CNN precision (default: fp16 on a GPU, fp32 on the CPU)."),
    click.option("--region", default=None, help=REGION_HELP),
    click.option("--partitions", default=None, help="Comma-separated partition pixels (store order)."),
    click.option("--no-calibration", is_flag=True, help="Ignore the checkpoint's calibration.json."),
    click.option("--rescale-flux", is_flag=True,
                 help="Put a store at another zero point on the model's flux scale (both must be known)."),
    click.option("--allow-survey-mismatch", is_flag=True,
                 help="Accept a store of another survey name (same filters and depth)."),
    click.option("--partition-rows", type=click.IntRange(min=1), default=None,
                 help=f"Published catalog: merge neighbouring partitions up to this many rows [the "
                      f"catalog's recorded layout; new: {D.PARTITION_ROWS}]."),
    click.option("--margin-arcsec", type=click.FloatRange(0, MAX_MARGIN_ARCSEC), default=None,
                 help=f"Published catalog: margin cache radius, 0 for none [the catalog's recorded layout; "
                      f"new: {D.MARGIN_ARCSEC:g}]."),
)
_PREDICT_NAMES = ("mc_samples", "engine", "batch_size", "seed", "precision", "region", "partitions",
                  "no_calibration", "rescale_flux", "allow_survey_mismatch", "partition_rows",
                  "margin_arcsec")


def predict_options(func):
    """Add the prediction options; the command gets them as ``make_options(device)``, which builds
    the one :class:`PredictOptions` of the run."""

    @functools.wraps(func)
    def wrapper(**kwargs):
        given = {name: kwargs.pop(name) for name in _PREDICT_NAMES}
        calibrate = not given.pop("no_calibration")
        layout = Layout(given.pop("partition_rows"), given.pop("margin_arcsec"))

        def make_options(device: str) -> PredictOptions:
            return PredictOptions(**given, calibrate=calibrate, device=device, layout=layout)

        return func(make_options=make_options, **kwargs)

    for option in reversed(_PREDICT_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
