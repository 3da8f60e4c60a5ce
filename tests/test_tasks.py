"""Tasks of bounded size: big partitions cut into slices, small ones packed, nothing lost or doubled,
and the catalog the same whichever way the work was cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_store

from galspec_batch.catalog import read_catalog
from galspec_batch.catalog.state import check_partition
from galspec_batch.options import PredictOptions
from galspec_batch.predict import predict_catalog
from galspec_batch.predict.runner import PartitionsFailed
from galspec_batch.predict.tasks import plan_tasks, slice_ranges, task_rows
from galspec_batch.store import Partition, open_store


def _rows(ranges) -> list[int]:
    return [r for a, b in ranges for r in range(a, b)]


def test_slices_of_a_partition_in_several_ranges():
    ranges = ((0, 5), (10, 13), (20, 30))
    assert slice_ranges(ranges, 0, 18) == ranges
    assert slice_ranges(ranges, 3, 9) == ((3, 5), (10, 13), (20, 21))
    assert slice_ranges(ranges, 8, 18) == ((20, 30),)
    assert _rows(slice_ranges(ranges, 0, 7)) + _rows(slice_ranges(ranges, 7, 18)) == _rows(ranges)


def test_plan_cuts_big_partitions_packs_small_ones_and_keeps_every_row_once():
    sizes = [5, 3, 700, 2, 1, 40, 250, 9]
    parts, start = [], 0
    for i, n in enumerate(sizes):
        parts.append(Partition(6, 100 + i, ((start, start + n),)))
        start += n + 3  # gaps: other partitions' rows
    tasks = plan_tasks(parts, max_rows=100)
    assert all(t.n <= 100 for t in tasks)
    assert [t.n for t in tasks] == sorted((t.n for t in tasks), reverse=True)  # largest first
    seen = sorted(r for t in tasks for p in t.pieces for r in _rows(p.ranges))
    assert seen == sorted(_rows(r for p in parts for r in p.ranges))
    big = [p for t in tasks for p in t.pieces if p.partition.pixel == 102]
    assert len(big) == 7 and {p.of for p in big} == {7} and sorted(p.index for p in big) == list(range(7))
    assert all(len(t.pieces) == 1 for t in tasks if not t.pieces[0].whole)  # a slice runs alone
    packed = [t for t in tasks if len(t.pieces) > 1]
    assert packed and {p.partition.pixel for p in packed[0].pieces} <= {100, 101, 103, 104, 105, 107}
    assert len(plan_tasks(parts, None)) == len(parts)


@pytest.mark.parametrize(("total", "workers", "batch", "want"), [
    (16_384, 2, 256, 2048),  # four tasks per worker
    (10_000_000, 16, 256, 16_384),  # at most MAX_TASK_ROWS
    (100, 2, 64, 64),  # at least one batch
    (1000, 2, 64, 128),  # a whole number of batches
])
def test_task_rows(total, workers, batch, want):
    assert task_rows(total, workers, batch) == want


def _frame(path) -> pd.DataFrame:
    return read_catalog(path).to_pandas().sort_values("object_id").reset_index(drop=True)


def test_cut_and_packed_tasks_write_the_same_catalog(tiny_catalog, tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "cut"
    s = predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(mc_samples=16, engine="eager",
                        batch_size=8), cluster="none", progress=False, max_task_rows=16)
    parts = open_store(tiny_store).partitions()
    assert max(p.n for p in parts) > 16 and min(p.n for p in parts) < 16  # both cut and packed
    assert s.partitions_done == len(parts) and s.objects == 240
    pd.testing.assert_frame_equal(_frame(tiny_catalog).drop(columns="model_id"),
                                  _frame(out).drop(columns="model_id"))


def test_a_damaged_partition_fails_alone_and_a_rerun_finishes(tmp_path, tiny_checkpoint, monkeypatch):
    import galspec_batch.store.format as store_format

    monkeypatch.setattr(store_format, "chunking", lambda *args: (8, 16))  # shards of 16 cutouts
    store = make_tiny_store(tmp_path / "s.zarr", n=240)
    s = open_store(store)
    parts = s.partitions()
    victim = max(parts, key=lambda p: p.n)  # cut into slices by max_task_rows=16
    shard_no = (victim.ranges[0][0] + 2) // 16
    shard = store / "images" / "c" / str(shard_no) / "0" / "0" / "0"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    out = tmp_path / "cat"
    opts = PredictOptions(mc_samples=4, engine="eager", batch_size=8)
    with pytest.raises(PartitionsFailed, match="cannot be read") as err:
        predict_catalog(store, tiny_checkpoint, out, opts, cluster="none", progress=False, max_task_rows=16)
    failed = {p.name for p in parts if check_partition(out, p.order, p.pixel) is not None}
    touching = {p.name for t in plan_tasks(parts, 16)
                if any(a // 16 <= shard_no <= (b - 1) // 16 for q in t.pieces for a, b in q.ranges)
                for p in t.partitions}
    assert victim.name in failed and failed <= touching and len(failed) < len(parts) / 2, (failed, touching)
    message = str(err.value)
    assert any(name in message for name in failed) and f"{len(failed)} of {len(parts)} partitions" in message
    shard.write_bytes(good)
    done = predict_catalog(store, tiny_checkpoint, out, opts, cluster="none", progress=False,
                           max_task_rows=16)
    assert done.partitions_done == len(failed) and done.partitions_skipped == len(parts) - len(failed)
    assert np.array_equal(np.sort(_frame(out).object_id), np.sort(s.object_id))


def test_a_region_that_misses_whole_slices_writes_what_it_holds(tiny_store, tiny_checkpoint, tmp_path):
    s = open_store(tiny_store)
    big = max(s.partitions(), key=lambda p: p.n)
    row = big.ranges[0][0] + 1  # one object of the big partition: most of its slices hold none
    region = f"cone:{s.ra[row]},{s.dec[row]},0.01"
    frames = []
    for limit in (None, 16):
        out = tmp_path / f"cut-{limit}"
        opts = PredictOptions(mc_samples=4, engine="eager", batch_size=8, region=region)
        predict_catalog(tiny_store, tiny_checkpoint, out, opts, cluster="none", progress=False,
                        max_task_rows=limit)
        frames.append(_frame(out).drop(columns="model_id"))
    assert frames[0].object_id.tolist() == [int(s.object_id[row])]
    pd.testing.assert_frame_equal(frames[0], frames[1])
