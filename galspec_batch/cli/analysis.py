"""Using a catalog: calibrate its uncertainties, select targets, decode spectra, flag anomalies."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import (
    UNCALIBRATED_NOTE,
    out_option,
    overwrite_option,
    quiet_option,
    region_option,
)

CATALOG = click.argument("catalog", type=click.Path())


@click.command("calibrate")
@CATALOG
@click.option("--labels", required=True, type=click.Path(), help="Labels table of observed latents.")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint that predicted CATALOG.")
@click.option("--split-file", type=click.Path(), default=None,
              help="Object ids to fit on, one per line (the rest measure coverage).")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=D.CALIBRATION_FRACTION, show_default=True,
              help="Share of objects to fit on, without --split-file.")
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@click.option("--exclude-trained", is_flag=True,
              help="Leave out labelled objects the network trained on (else they are refused).")
@click.option("--plot", type=click.Path(), default=None, help="Calibration plot (PNG) to write.")
@click.option("--dry-run", is_flag=True, help="Measure and print, but write no calibration.json.")
@click.option("--raw-spreads", is_flag=True,
              help="CATALOG is not galspec's (e.g. rewritten by lsdb) and its _std are the network's own.")
def calibrate_cmd(catalog, labels, checkpoint, split_file, fraction, seed, exclude_trained, plot,
                  dry_run, raw_spreads) -> None:
    """Recalibrate the uncertainties of CATALOG's checkpoint on new labelled objects (fit on one
    part, assessed on the rest) and save the calibration with the checkpoint."""
    from galspec_batch.calibrate import calibrate_catalog

    r = calibrate_catalog(catalog, labels, checkpoint, fraction=fraction, split_file=split_file, seed=seed,
                          exclude_trained=exclude_trained, write=not dry_run, raw_spreads=raw_spreads)
    click.echo(r.table())
    if r.path is not None:
        click.echo(f"wrote {r.path}")
    if plot:
        from galspec_batch.plots import plot_calibration

        plot_calibration(*r.held_out, scale=r.fit.scale, nu=r.fit.nu, names=r.fit.targets, path=plot)
        click.echo(f"plot: {plot}")


@click.command("select")
@CATALOG
@click.option("--where", default=None, help="SQL expression over catalog columns, e.g. 'latent_1 > 0.5'.")
@region_option
@click.option("--prob", default=None, help="Condition 'COLUMN OP NUMBER' whose probability is computed.")
@click.option("--min-prob", type=click.FloatRange(0, 1), default=None,
              help=f"Keep rows with prob >= this [{D.MIN_PROB} with --prob].")
@click.option("--rank", type=click.Choice(["uncertainty"]), default=None,
              help="uncertainty: largest predictive spread first (what to observe to teach the model).")
@click.option("--order-by", default=None, help="COLUMN [ASC|DESC], comma-separated.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Keep the first K rows.")
@click.option("--columns", default=None, help="Extra catalog columns to write, comma-separated.")
@click.option("--allow-missing", is_flag=True,
              help="Select among the rows that have a value where a --where/--prob column is NULL for some.")
@out_option("targets.parquet | .csv | .fits | .ecsv (FITS and ECSV with units)")
@overwrite_option()
def select_cmd(catalog, where, region, prob, min_prob, rank, order_by, limit, columns, allow_missing, out,
               overwrite) -> None:
    """Select targets from CATALOG: object_id, ra, dec, priority and the selected quantities."""
    from galspec_batch.select import select_targets, selection_record, write_targets

    extra = [c.strip() for c in columns.split(",") if c.strip()] if columns else []
    table = select_targets(catalog, where=where, region=region, prob=prob, min_prob=min_prob, rank=rank,
                           order_by=order_by, limit=limit, columns=extra, allow_missing=allow_missing)
    meta = {"catalog": str(catalog), "where": where, "region": region, "prob": prob, "min_prob": min_prob,
            "rank": rank, "order_by": order_by, "limit": limit}
    write_targets(table, out, overwrite=overwrite, meta=meta)
    rec = selection_record(table)
    left_out = (f" ({rec['rows_without_value']} of {rec['rows']} rows had no value for "
                f"{' or '.join(rec['columns'])} and were left out)" if rec.get("rows_without_value") else "")
    uses_spread = prob is not None or rank is not None
    note = UNCALIBRATED_NOTE if uses_spread and not rec.get("calibrated", True) else ""
    click.echo(f"wrote {out}: {table.num_rows} targets{left_out}{note}")


def _ids(ctx, param, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command("decode")
@CATALOG
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--ids", default=None, callback=_ids, help="Comma-separated object ids.")
@click.option("--where", default=None, help="SQL expression over catalog columns (as in `galspec select`).")
@region_option
@out_option("Decoded spectra (Parquet) to write.")
@click.option("--draws", type=click.IntRange(2, 10_000), default=D.DECODE_DRAWS, show_default=True,
              help="Latent draws per object.")
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@click.option("--write-back", is_flag=True,
              help="Store the derived columns in the catalog's HATS extension <catalog>/derived/.")
@click.option("--plot", type=click.Path(), default=None, help="Also plot a few decoded spectra (PNG).")
@click.option("--observed-frame", is_flag=True,
              help="Draw the --plot in the observed frame, at each object's z_phot.")
@overwrite_option("--out (and a derived extension made by another VAE)")
@quiet_option
def decode_cmd(catalog, vae_dir, ids, where, region, out, draws, seed, write_back, plot, observed_frame,
               overwrite, quiet) -> None:
    """Decode CATALOG's predicted latents into spectra with 16-84% bands, EWs and D4000."""
    from galspec_batch.decode import decode_catalog

    s = decode_catalog(catalog, vae_dir, out, ids=ids, where=where, region=region, n_draws=draws,
                       seed=seed, write_back=write_back, overwrite=overwrite, progress=not quiet)
    click.echo(str(s))
    if plot:
        from galspec_batch.plots import plot_decoded_file

        plot_decoded_file(out, plot, observed_frame=observed_frame)
        click.echo(f"  plot: {plot}")


@click.command("anomalies")
@CATALOG
@click.option("--labels", type=click.Path(), default=None,
              help="Labels table (object_id, latent_1..N from `galspec vae encode`) of observed spectra.")
@out_option("Flagged table (Parquet) to write.")
@click.option("--truth", type=click.Path(), default=None,
              help="Spectra table with truth_anomaly (mock survey): report the ROC AUC.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=D.ANOMALY_ALPHA,
              show_default=True, help="Flag labelled objects with p-value below this.")
@click.option("--ood-threshold", type=float, default=D.OOD_THRESHOLD, show_default=True,
              help="Flag unlabelled objects with ood_score above this (robust sigma).")
@click.option("--neighbours", "k", type=click.IntRange(min=1), default=D.NEIGHBOURS, show_default=True,
              help="k of the k-NN density.")
@overwrite_option()
def anomalies_cmd(catalog, labels, out, truth, alpha, ood_threshold, k, overwrite) -> None:
    """Flag galaxies of CATALOG whose spectrum disagrees with their image (with --labels), or that
    lie out of the catalog's distribution."""
    from galspec_batch.anomalies import find_anomalies

    r = find_anomalies(catalog, out, labels=labels, truth=truth, alpha=alpha, ood_threshold=ood_threshold,
                       k=k, overwrite=overwrite)
    click.echo(f"wrote {r.out}: {r.n_flagged} of {r.n_objects} objects flagged "
               f"({r.n_labelled} with observed latents)")
    if r.n_trained:
        click.echo(f"  note: the network trained on {r.n_trained} of the labelled objects; their errors are "
                   "smaller than a new galaxy's, so they are flagged less often than --alpha says")
    if truth is not None:
        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        click.echo(f"ROC AUC against truth_anomaly: Mahalanobis {fmt(r.auc_mahalanobis)}, "
                   f"out-of-distribution {fmt(r.auc_ood)}")


COMMANDS = (calibrate_cmd, select_cmd, decode_cmd, anomalies_cmd)
