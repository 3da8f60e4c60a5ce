"""Behaviour of the labels table reader ``galspec_batch.labels``: a valid table reads back typed and
checked; each kind of bad table raises a galspec error naming the file and what is wrong."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galspec_batch.columns import count_latents, latent_names
from galspec_batch.errors import FormatError, GalspecError, InputError, MissingFileError
from galspec_batch.labels import read_labels, show_ids


def write_table(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def valid_columns(n=4, n_latent=3, seed=0):
    rng = np.random.default_rng(seed)
    cols = {"object_id": np.arange(100, 100 + n, dtype=np.int64)}
    for i in range(1, n_latent + 1):
        cols[f"latent_{i}"] = rng.normal(size=n)
    return cols


# ---------------------------------------------------------------- valid tables


def test_valid_table_reads_back(tmp_path):
    cols = valid_columns()
    cols["ra"] = np.linspace(0, 1, 4)  # extra non-latent columns are ignored
    path = write_table(tmp_path / "labels.parquet", cols)
    lab = read_labels(path)
    assert lab.object_id.dtype == np.int64
    np.testing.assert_array_equal(lab.object_id, [100, 101, 102, 103])
    assert lab.names == ["latent_1", "latent_2", "latent_3"]
    assert lab.values.dtype == np.float32
    assert lab.values.shape == (4, 3)
    expected = np.stack([cols[f"latent_{i}"] for i in (1, 2, 3)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(lab.values, expected)


def test_column_order_and_dtypes_are_normalised(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {
        "latent_2": np.array([3.0, 4.0], np.float64),
        "object_id": np.array([7, 5], np.int32),
        "latent_1": np.array([1.0, 2.0], np.float32),
    })
    lab = read_labels(path)
    assert lab.object_id.dtype == np.int64
    np.testing.assert_array_equal(lab.object_id, [7, 5])  # row order kept
    assert lab.names == ["latent_1", "latent_2"]
    np.testing.assert_array_equal(lab.values, np.array([[1, 3], [2, 4]], np.float32))


def test_n_latent_matching_the_table(tmp_path):
    path = write_table(tmp_path / "labels.parquet", valid_columns(n_latent=2))
    lab = read_labels(path, n_latent=2)
    assert lab.names == ["latent_1", "latent_2"]
    assert lab.values.shape == (4, 2)


def test_large_ids_survive_exactly(tmp_path):
    ids = np.array([2**62 + 1, 2**62 + 3], np.int64)  # not representable as float64
    path = write_table(tmp_path / "labels.parquet", {"object_id": ids, "latent_1": [0.0, 1.0]})
    np.testing.assert_array_equal(read_labels(path).object_id, ids)


# ---------------------------------------------------------------- missing and unreadable files


def test_missing_file_raises_missing_file_error(tmp_path):
    path = tmp_path / "nope.parquet"
    with pytest.raises(MissingFileError, match="nope.parquet") as info:
        read_labels(path)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, GalspecError)


def test_directory_is_not_a_labels_file(tmp_path):
    path = tmp_path / "labels.parquet"
    path.mkdir()
    with pytest.raises(MissingFileError, match="labels.parquet"):
        read_labels(path)


@pytest.mark.parametrize("content", [b"object_id,latent_1\n1,0.5\n", b"", b"PAR1 truncated"])
def test_non_parquet_file_raises_format_error(tmp_path, content):
    path = tmp_path / "labels.parquet"
    path.write_bytes(content)
    with pytest.raises(FormatError) as info:
        read_labels(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- bad content


def test_missing_object_id_column(tmp_path):
    cols = valid_columns()
    cols["objid"] = cols.pop("object_id")
    path = write_table(tmp_path / "labels.parquet", cols)
    with pytest.raises(InputError) as info:
        read_labels(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "object_id" in msg
    assert "objid" in msg  # shows the columns it did find


def test_duplicate_ids_are_named(tmp_path):
    cols = valid_columns(n=6)
    cols["object_id"] = np.array([10, 11, 12, 11, 13, 12], np.int64)
    path = write_table(tmp_path / "labels.parquet", cols)
    with pytest.raises(InputError, match="duplicate") as info:
        read_labels(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "[11, 12]" in msg
    assert "10" not in msg.replace(str(path), "")


def test_non_contiguous_latent_columns(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {
        "object_id": [1, 2], "latent_1": [0.0, 1.0], "latent_3": [0.0, 1.0],
    })
    with pytest.raises(InputError) as info:
        read_labels(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "[1, 3]" in msg
    assert "latent_1..latent_2" in msg


def test_no_latent_columns(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {"object_id": [1, 2], "z": [0.1, 0.2]})
    with pytest.raises(InputError, match="no latent columns") as info:
        read_labels(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_latents_name_the_objects(tmp_path, bad):
    cols = valid_columns(n=5, n_latent=2)
    cols["latent_2"][1] = bad
    cols["latent_1"][3] = bad
    path = write_table(tmp_path / "labels.parquet", cols)
    with pytest.raises(InputError, match="NaN or infinite") as info:
        read_labels(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "2 objects" in msg
    assert "[101, 103]" in msg


def test_null_latent_is_rejected_as_nan(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {
        "object_id": [1, 2, 3], "latent_1": pa.array([0.5, None, 1.5], pa.float64()),
    })
    with pytest.raises(InputError, match=r"object_id \[2\]"):
        read_labels(path)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float32_overflow_is_rejected(tmp_path):
    # finite as float64, infinite once cast to the float32 the reader returns
    path = write_table(tmp_path / "labels.parquet", {"object_id": [1, 2], "latent_1": [0.0, 1e300]})
    with pytest.raises(InputError, match=r"object_id \[2\]"):
        read_labels(path)


def test_n_latent_with_missing_columns(tmp_path):
    path = write_table(tmp_path / "labels.parquet", valid_columns(n_latent=2))
    with pytest.raises(InputError) as info:
        read_labels(path, n_latent=4)
    msg = str(info.value)
    assert str(path) in msg
    assert "['latent_3', 'latent_4']" in msg
    assert "4 latents" in msg


def test_n_latent_with_extra_columns(tmp_path):
    path = write_table(tmp_path / "labels.parquet", valid_columns(n_latent=3))
    with pytest.raises(InputError, match="latent_3"):
        read_labels(path, n_latent=2)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_null_object_id_is_rejected(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {
        "object_id": pa.array([1, None, 3], pa.int64()), "latent_1": [0.0, 1.0, 2.0],
    })
    with pytest.raises(InputError, match="object_id"):
        read_labels(path)


def test_zero_padded_latent_name_raises_input_error(tmp_path):
    path = write_table(tmp_path / "labels.parquet", {"object_id": [1, 2], "latent_01": [0.0, 1.0]})
    with pytest.raises(InputError, match="latent_01"):
        read_labels(path)


# ---------------------------------------------------------------- helpers


def test_latent_names():
    assert latent_names(3) == ["latent_1", "latent_2", "latent_3"]
    assert latent_names(0) == []


def test_count_latents_contiguous_in_any_order():
    cols = ["object_id", "latent_3", "ra", "latent_1", "latent_2", "latent_x", "my_latent_4", "latent_5b"]
    assert count_latents(cols, "t") == 3
    assert count_latents([f"latent_{i}" for i in range(12, 0, -1)], "t") == 12  # numeric, not lexical


@pytest.mark.parametrize("cols, found", [
    (["latent_1", "latent_3"], "[1, 3]"),
    (["latent_2", "latent_3"], "[2, 3]"),
    (["latent_0", "latent_1"], "[0, 1]"),
])
def test_count_latents_rejects_gaps(cols, found):
    with pytest.raises(InputError) as info:
        count_latents(cols, "table T")
    msg = str(info.value)
    assert msg.startswith("table T ")
    assert found in msg


def test_count_latents_rejects_none():
    with pytest.raises(InputError, match="table T has no latent columns") as info:
        count_latents(["object_id", "flux"], "table T")
    assert "flux" in str(info.value)


def test_show_ids():
    assert show_ids(np.array([3, 7])) == "[3, 7]"
    assert show_ids(np.arange(5)) == "[0, 1, 2, 3, 4]"
    assert show_ids(np.arange(17)) == "[0, 1, 2, 3, 4] and 12 more"
    assert show_ids(np.arange(10), n=2) == "[0, 1] and 8 more"
    assert show_ids(np.array([], np.int64)) == "[]"
    assert show_ids([4, 5]) == "[4, 5]"
