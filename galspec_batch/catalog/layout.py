"""How ``finalize`` lays out the published catalog (:class:`galspec_batch.options.Layout`):
neighbouring store partitions merged up to a row threshold (hats' ``generate_alignment``, the
``pixel_threshold`` of hats-import), and the pixel pairs of the margin cache (as lsdb and
hats-import find them: every row in the ring of higher-order pixels bordering a partition, whose
pixels are at least the margin radius wide)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from galspec_batch.errors import UsageError
from galspec_batch.sky import SPATIAL_INDEX_ORDER

MAX_MERGE_ORDER = 10  # hats' alignment takes a dense histogram: 12 * 4**10 pixels at most


def merge_plan(counts: dict[int, int], order: int, threshold: int) -> dict[tuple[int, int], list[int]]:
    """Destination partition (order, pixel) of each group of store pixels (at ``order``): neighbours
    share a destination while together they hold at most ``threshold`` rows."""
    from hats.pixel_math.partition_stats import generate_alignment

    if order > MAX_MERGE_ORDER:
        return {(order, p): [p] for p in sorted(counts)}
    hist = np.zeros(12 * 4**order, np.int64)
    for pixel, n in counts.items():
        hist[pixel] = min(int(n), threshold)  # a store partition over the threshold stays alone
    alignment = generate_alignment(hist, highest_order=order, lowest_order=0, threshold=threshold)
    groups: dict[tuple[int, int], list[int]] = {}
    for pixel in sorted(counts):
        dest_order, dest_pixel, _ = alignment[pixel]
        groups.setdefault((int(dest_order), int(dest_pixel)), []).append(pixel)
    return groups


def margin_order(arcsec: float, highest_order: int) -> int:
    """The order of the pixels whose ring around a partition holds its margin: the highest whose
    pixels are at least ``arcsec`` wide; refused when that is not above every partition's order."""
    import hats.pixel_math.healpix_shim as hp

    order = int(hp.margin2order(margin_thr_arcmin=arcsec / 60.0))
    if order <= highest_order:
        raise UsageError(f"--margin-arcsec {arcsec:g} is as wide as the catalog's smallest partitions "
                         f"(order {highest_order}); use a smaller margin")
    return order


def margin_pairs(partitions: list[tuple[int, int]], order: int) -> pd.DataFrame:
    """Every (margin pixel at ``order``, partition order, partition pixel) with the margin pixel in
    the ring around the partition: the catalog's partitions and the empty sky around them (hats'
    negative tree), so that a crossmatch beside the catalog's edge finds its rows too. The rings
    are hats' ``get_margin``, from cdshealpix once per order rather than once per pixel."""
    import cdshealpix

    by_order: dict[int, list[int]] = {}
    for o, p in [*partitions, *empty_sky(partitions)]:  # they tile the sky: never none
        by_order.setdefault(o, []).append(p)
    margin, orders, owners = [], [], []
    for o, pixels in sorted(by_order.items()):
        owner = np.asarray(pixels, np.int64)
        edges, corners = cdshealpix.external_neighbours(ipix=owner, depth=o, delta_depth=order - o)
        ring = np.concatenate([edges.astype(np.int64), corners.astype(np.int64)], axis=1)
        keep = ring >= 0  # a corner that is not there (8 of the sky's 12 base pixels lack one)
        margin.append(ring[keep])
        owners.append(np.broadcast_to(owner[:, None], ring.shape)[keep])
        orders.append(np.full(int(keep.sum()), o, np.int64))
    return pd.DataFrame({"margin_pixel": np.concatenate(margin), "order": np.concatenate(orders),
                         "pixel": np.concatenate(owners)})


def empty_sky(partitions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The largest pixels that hold no partition and lie in none: with ``partitions`` they tile
    the sky (hats' negative tree; computed here because hats' numba version compiles for 8 s in
    every process that finalizes)."""
    have = set(partitions)
    if not have:
        return [(0, p) for p in range(12)]
    top = max(o for o, _ in have)
    # every ancestor of a partition holds part of the catalog and is split further
    split = {(o, p >> (2 * (po - o))) for po, p in have for o in range(po)}
    out, level = [], [(0, p) for p in range(12)]
    while level:
        nxt = []
        for o, p in level:
            if (o, p) in have:
                continue
            if (o, p) in split and o < top:
                nxt += [(o + 1, 4 * p + k) for k in range(4)]
            else:
                out.append((o, p))
        level = nxt
    return out


def margin_rows(table: pa.Table, healpix: np.ndarray, pairs: pd.DataFrame, order: int
                ) -> dict[tuple[int, int], pa.Table]:
    """The rows of ``table`` (with spatial index ``healpix``) in each partition's margin."""
    rows = pd.DataFrame({"margin_pixel": healpix >> (2 * (SPATIAL_INDEX_ORDER - order)),
                         "row": np.arange(len(healpix))})
    found = rows.merge(pairs, on="margin_pixel")
    return {(int(o), int(p)): table.take(pa.array(np.sort(g["row"].to_numpy())))
            for (o, p), g in found.groupby(["order", "pixel"])}
