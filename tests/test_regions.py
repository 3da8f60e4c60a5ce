"""Sky regions: parsing, exact per-object cut against brute force, pixel coverage, partitions."""

from __future__ import annotations

import numpy as np
import pytest

from galspec_batch.errors import InputError, MissingFileError
from galspec_batch.regions import (
    Box,
    Cone,
    MocRegion,
    PixelList,
    parse_partitions,
    parse_region,
    select_partitions,
)
from galspec_batch.sky import healpix_29, pixel_at_order
from galspec_batch.store import create_store, open_store


def _random_sky(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return ra, dec


def _near(ra0: float, dec0: float, half: float, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ra = np.mod(ra0 + rng.uniform(-half, half, n) / max(np.cos(np.radians(dec0)), 0.05), 360)
    dec = np.clip(dec0 + rng.uniform(-half, half, n), -90, 90)
    return ra, dec


def _separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance in degrees via unit vectors (independent of the haversine in Cone)."""

    def vec(ra, dec):
        ra, dec = np.radians(ra), np.radians(dec)
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)

    dot = np.clip(vec(ra1, dec1) @ vec(np.atleast_1d(ra2), np.atleast_1d(dec2)).T, -1, 1)[:, 0]
    return np.degrees(np.arccos(dot))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cone:10,20,1.5", Cone(10, 20, 1.5)),
        (" CONE: 10 , -20 , 0.5 ", Cone(10, -20, 0.5)),
        ("box:350,10,-5,5", Box(350, 10, -5, 5)),
        ("pixels:3:7,5,5", PixelList(3, (5, 7))),
    ],
)
def test_parse_region_forms(text, expected):
    region = parse_region(text)
    assert region == expected
    assert parse_region(str(region)) == region  # the text form round-trips


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("circle:1,2,3", "unknown region kind 'circle'"),
        ("cone:1,2", "expected 3 comma-separated numbers, got 2"),
        ("cone:a,2,3", "expected numbers"),
        ("cone:1,95,3", "-90 <= Dec <= 90"),
        ("box:10,20,5,-5", "DEC_MIN < DEC_MAX"),
        ("pixels:3", "pixels:ORDER:P1,P2"),
        ("pixels:2:500", "must be in 0..191"),
        ("10,20,1", "accepted forms"),
    ],
)
def test_bad_region_says_accepted_forms(text, fragment):
    with pytest.raises(InputError) as info:
        parse_region(text)
    assert fragment in str(info.value)


def test_missing_moc_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.fits"):
        parse_region(f"moc:{tmp_path / 'nope.fits'}")
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    with pytest.raises(InputError, match="not a MOC FITS file"):
        parse_region(f"moc:{bad}")


@pytest.mark.parametrize("ra0, dec0, radius", [(10.0, 20.0, 1.5), (359.5, -0.3, 2.0), (77.0, 88.9, 3.0)])
def test_cone_contains_is_the_angular_distance_cut(ra0, dec0, radius):
    ra, dec = _near(ra0, dec0, 2.5 * radius, 20000)
    inside = Cone(ra0, dec0, radius).contains(ra, dec)
    sep = _separation(ra, dec, ra0, dec0)
    clear = np.abs(sep - radius) > 1e-9  # ignore points on the boundary within rounding
    assert np.array_equal(inside[clear], (sep <= radius)[clear])
    assert 0.1 < inside.mean() < 0.9


def test_box_wraps_through_ra_zero():
    ra, dec = _random_sky(50000)
    box = Box(350, 10, -5, 5)
    expected = ((ra >= 350) | (ra <= 10)) & (dec >= -5) & (dec <= 5)
    assert np.array_equal(box.contains(ra, dec), expected)
    assert expected.sum() > 50
    plain = Box(10, 20, 30, 40)
    assert np.array_equal(plain.contains(ra, dec), (ra >= 10) & (ra <= 20) & (dec >= 30) & (dec <= 40))
    assert Box(0, 360, -1, 1).contains(ra, dec).sum() == ((dec >= -1) & (dec <= 1)).sum()


def test_pixel_list_contains_matches_healpix():
    ra, dec = _random_sky(20000)
    region = PixelList(2, (5, 17, 100))
    expected = np.isin(pixel_at_order(healpix_29(ra, dec), 2), [5, 17, 100])
    assert np.array_equal(region.contains(ra, dec), expected)
    assert set(region.pixels(1).tolist()) == {1, 4, 25}
    assert region.pixels(3).tolist() == sorted(q for p in (5, 17, 100) for q in range(4 * p, 4 * p + 4))


def _check_coverage(region, ra, dec, order, max_extra_ratio):
    """Every pixel holding a point of the region is listed, and the list is not much larger."""
    inside = region.contains(ra, dec)
    needed = np.unique(pixel_at_order(healpix_29(ra[inside], dec[inside]), order))
    listed = region.pixels(order)
    assert np.isin(needed, listed).all()
    assert len(listed) <= max_extra_ratio * max(len(needed), 1)
    return needed, listed


@pytest.mark.parametrize(
    "region",
    [Cone(10, 20, 3), Cone(359, 1, 4), Cone(0, 89, 5), Box(350, 10, -5, 5), Box(100, 130, -80, -60)],
    ids=str,
)
def test_overlap_pixels_cover_the_region_and_few_more(region):
    ra, dec = _random_sky(300000, seed=3)
    for order in (3, 5):
        needed, listed = _check_coverage(region, ra, dec, order, max_extra_ratio=2.0)
        assert len(needed) >= 3
    moc = region.to_moc(7)
    assert moc.contains_lonlat(
        ra[region.contains(ra, dec)] * _deg(), dec[region.contains(ra, dec)] * _deg()
    ).all()


def _deg():
    import astropy.units as u

    return u.deg


def test_moc_region_round_trip(tmp_path):
    moc = Cone(40, -30, 4).to_moc(6)
    path = tmp_path / "region.fits"
    moc.save(path, format="fits")
    region = parse_region(f"moc:{path}")
    assert isinstance(region, MocRegion)
    ra, dec = _random_sky(100000, seed=4)
    expected = moc.contains_lonlat(ra * _deg(), dec * _deg())
    assert np.array_equal(region.contains(ra, dec), expected)
    needed, listed = _check_coverage(region, ra, dec, 4, max_extra_ratio=1.5)
    assert len(needed) >= 4
    # pixels at the MOC's own order are exactly its cells
    cells = np.unique(pixel_at_order(healpix_29(ra[expected], dec[expected]), 6))
    assert np.isin(cells, region.pixels(6)).all()


def test_parse_partitions():
    assert parse_partitions("12, 3,12") == [3, 12]
    assert parse_partitions("Norder=6/Npix=12,Norder=6/Dir=0/Npix=40.parquet") == [12, 40]
    with pytest.raises(InputError, match="bad partition name 'abc'"):
        parse_partitions("abc")


@pytest.fixture(scope="module")
def region_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("regions") / "store.zarr"
    rng = np.random.default_rng(5)
    ra, dec = _near(150.0, 2.0, 6.0, 400, seed=6)
    with create_store(path, image_shape=(4, 4), partition_order=3) as w:
        w.append(np.arange(400), ra, dec, rng.normal(size=(400, 5, 4, 4)).astype(np.float32))
    return open_store(path)


def test_select_partitions_counts_objects_in_region(region_store):
    region = Cone(150.0, 2.0, 2.5)
    chosen = select_partitions(region_store, region)
    inside = region.contains(region_store.ra, region_store.dec)
    assert sum(n for _, n in chosen) == inside.sum() > 0
    pix = pixel_at_order(region_store.healpix_29[inside], 3)
    assert sorted(p.pixel for p, _ in chosen) == sorted(set(pix.tolist()))
    everything = select_partitions(region_store)
    assert sum(n for _, n in everything) == 400
    assert all(n == p.n for p, n in everything)


def test_select_partitions_errors(region_store):
    with pytest.raises(InputError, match="overlaps no data in store"):
        select_partitions(region_store, "cone:300,-60,1")
    known = region_store.partitions()[0].pixel
    with pytest.raises(InputError, match=r"unknown partition 99999 in store .*order 3"):
        select_partitions(region_store, partitions=f"{known},99999")
    one = select_partitions(region_store, partitions=f"Norder=3/Npix={known}")
    assert [p.pixel for p, _ in one] == [known]
