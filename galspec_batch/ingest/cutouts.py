"""Pan-STARRS / HSC style FITS cutouts into the cutout store.

Inputs are FITS files (or directories of them), or a catalog CSV. Two layouts:

* band cubes, one file per object, ``NAXIS3`` = bands. Band names come from the header (``BANDS``
  = "grizy" or "g,r,i,z,y", or ``BAND1``.. / ``FILTER1``..); otherwise ``cube_bands`` (``--bands``)
  gives the file's plane order. Planes are put in the store's band order whatever the file order.
* one file per band per object, named ``<objid>_<band>.fits`` or ``<objid>.<band>.fits`` (the last
  ``_x``/``.x`` token that is a band letter; PS1 names like ``...stk.g.unconv.fits`` work), the
  band also read from the header ``FILTER`` when the name has none.

A catalog CSV has ``object_id``, optional ``ra``/``dec`` and either ``file_g`` .. ``file_y`` (an
empty cell is a missing band) or ``file`` with an optional ``band`` column (one row per band
file, or per cube without it); relative paths are relative to the CSV.

Object id: the CSV's ``object_id``, else an integer header ``OBJID``/``OBJECT_ID``, else the
object's name (file stem, band token removed) when it is an integer, else a stable hash: the
first 8 bytes of BLAKE2b(name), big-endian, top bit cleared. RA/Dec: the CSV's, else the
celestial WCS at the image centre (pixel ((W-1)/2, (H-1)/2)). Pixel scale: from the WCS (mean of
the two axes), recorded in the store; cutouts are never resampled, so a different scale or
shape is an error for that object unless ``image_size`` asks for a centre crop/pad (padding is
NaN: no data). A missing band is zero-filled with mask False (flag MISSING_BAND); NaN pixels are
kept and flagged (NAN_PIXELS).

Pan-STARRS (``ingest.ps1``): a 2-d image with ``BSOFTEN`` and ``BOFFSET`` (PS1 stack images) is
turned from asinh-scaled back into linear flux; a PS1 image with ``EXPTIME`` carries its AB zero
point, ``25 + 2.5 log10(EXPTIME)``. The store has one zero point a band: ``zero_point`` when given,
else 25 for PS1 images (each plane rescaled onto it, ``10**(0.4 * (25 - zp))``), else 22.5 for
nanomaggies or unknown; the rule is ``ps1.ZeroPoints``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from galspec_batch import defaults as D
from galspec_batch.columns import OBJECT_ID
from galspec_batch.errors import FormatError, GalspecError, InputError, MissingFileError
from galspec_batch.ingest import ps1
from galspec_batch.ingest.fitsio import first_image_hdu, fits_stem, is_fits_name, read_fits
from galspec_batch.ingest.quarantine import IngestReport, Quarantined, check_output_free, finish
from galspec_batch.progress import track
from galspec_batch.store import DEFAULT_BANDS, create_store

_NAME_BAND = re.compile(r"^(?P<key>.+)[._](?P<band>[grizy])(?P<rest>[._].*)?$")
_HEADER_BAND = re.compile(r"(?<![a-z])([grizy])(?![a-z])")
_BAND_KEYS = ("FILTER", "BAND", "FPA.FILTER")
_ID_KEYS = ("OBJID", "OBJECT_ID", "OBJ_ID")
_SCALE_TOLERANCE = 0.01


@dataclass
class ObjectFiles:
    """The files of one object before reading: per-band files or one cube."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    cube: Path | None = None
    object_id: int | None = None
    ra: float | None = None
    dec: float | None = None
    problem: str | None = None

    @property
    def paths(self) -> list[Path]:
        return [self.cube] if self.cube is not None else list(self.files.values())


@dataclass
class Cutout:
    """One object read and checked: ``image`` [bands, H, W] float32 in the store's band order, linear
    flux; ``zero_points`` the header AB zero points of the bands that have one."""

    object_id: int
    ra: float
    dec: float
    image: np.ndarray
    mask: np.ndarray
    pixel_scale: float | None
    unit: str | None
    zero_points: dict[str, float] = field(default_factory=dict)


def parse_bands(text: str) -> tuple[str, ...]:
    """``"grizy"``, ``"g,r,i,z,y"`` or ``"g r i z y"`` -> ("g", "r", "i", "z", "y")."""
    text = text.strip()
    parts = [p for p in re.split(r"[\s,;]+", text) if p] if re.search(r"[\s,;]", text) else list(text)
    bands = tuple(p.lower() for p in parts)
    if not bands or len(set(bands)) != len(bands):
        raise InputError(f"band list {text!r} is empty or repeats a band")
    return bands


def object_id_from_name(name: str) -> int:
    """The name as an int when it is one (PS1 objids), else a stable 63-bit BLAKE2b hash of it."""
    if re.fullmatch(r"\d{1,18}", name):
        return int(name)
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def find_objects(inputs: Iterable[str | Path]) -> list[ObjectFiles]:
    """Group FITS files (directories expanded) into objects by name; see the module docstring."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        files.extend(sorted(f for f in p.iterdir() if is_fits_name(f)) if p.is_dir() else [p])
    groups: dict[tuple[Path, str], ObjectFiles] = {}
    for f in dict.fromkeys(files):  # a file named twice (directly and by its folder) counts once
        m = _NAME_BAND.match(fits_stem(f))
        if m is None:
            groups[(f.parent, str(f))] = ObjectFiles(fits_stem(f), cube=f)
            continue
        obj = groups.setdefault((f.parent, m["key"]), ObjectFiles(m["key"]))
        if m["band"] in obj.files:
            obj.problem = f"two files for band {m['band']} of {obj.name}: {obj.files[m['band']]} and {f}"
        obj.files[m["band"]] = f
    return list(groups.values())


def objects_from_catalog(path: str | Path) -> list[ObjectFiles]:
    """Objects listed in a catalog CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"catalog {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise FormatError(f"{path}: not a readable CSV ({exc})") from exc
    cols = set(df.columns)
    band_cols = sorted(c for c in cols if c.startswith("file_"))
    if OBJECT_ID not in cols or not (band_cols or "file" in cols):
        raise InputError(
            f"catalog {path} needs columns object_id and file_<band> or file (has {sorted(cols)})"
        )
    if ("ra" in cols) != ("dec" in cols):
        raise InputError(f"catalog {path} has only one of ra/dec")

    def resolve(cell: str) -> Path:
        p = Path(cell.strip())
        return p if p.is_absolute() else path.parent / p

    objects: list[ObjectFiles] = []
    by_id: dict[str, ObjectFiles] = {}  # the band-column layout: rows of one object group together
    for i, row in df.iterrows():
        key, line = row[OBJECT_ID].strip(), f"{path} line {i + 2}"
        if not re.fullmatch(r"-?\d{1,19}", key) or not -(2**63) <= int(key) < 2**63:
            objects.append(ObjectFiles(line, problem=f"{line}: object_id {key!r} is not an int64"))
            continue
        if "band" in cols and not band_cols:
            obj = by_id.get(key)
            if obj is None:
                obj = by_id[key] = ObjectFiles(key, object_id=int(key))
                objects.append(obj)
            band = row["band"].strip().lower()
            if band in obj.files:
                obj.problem = f"{line}: a second file for band {band} of object {key}"
            obj.files[band] = resolve(row["file"])
        else:
            obj = ObjectFiles(key, object_id=int(key))
            objects.append(obj)
            if band_cols:
                obj.files = {c[5:].lower(): resolve(row[c]) for c in band_cols if row[c].strip()}
            else:
                obj.cube = resolve(row["file"])
        if "ra" in cols and row["ra"].strip():
            try:
                obj.ra, obj.dec = float(row["ra"]), float(row["dec"])
            except ValueError:
                obj.problem = f"{line}: ra/dec {row['ra']!r}, {row['dec']!r} are not numbers"
    return objects


def _header_band(header) -> str | None:
    for key in _BAND_KEYS:
        if key in header:
            m = _HEADER_BAND.search(str(header[key]).lower())
            if m:
                return m.group(1)
    return None


def _cube_band_names(header, n: int, cube_bands: tuple[str, ...] | None, path: Path) -> tuple[str, ...]:
    if "BANDS" in header:
        try:
            names = parse_bands(str(header["BANDS"]))
        except InputError as exc:
            raise InputError(f"{path}: header BANDS: {exc}") from exc
    elif all(f"BAND{k}" in header for k in range(1, n + 1)):
        names = tuple(str(header[f"BAND{k}"]).strip().lower() for k in range(1, n + 1))
    elif all(f"FILTER{k}" in header for k in range(1, n + 1)):
        found = [_HEADER_BAND.search(str(header[f"FILTER{k}"]).lower()) for k in range(1, n + 1)]
        names = tuple(m.group(1) if m else str(header[f"FILTER{k + 1}"]) for k, m in enumerate(found))
    elif cube_bands:
        names = tuple(cube_bands)
    else:
        raise InputError(
            f"{path}: a cube of {n} planes with no band names in its header (BANDS, BAND1.., FILTER1..); "
            "pass --bands with the file's plane order, e.g. --bands grizy"
        )
    if len(names) != n:
        raise InputError(f"{path}: {n} planes but {len(names)} band names {names}")
    return names


def _wcs_position(header, shape: tuple[int, ...]) -> tuple[float | None, float | None, float | None]:
    """(ra, dec) at the image centre and the pixel scale in arcsec, or Nones without a sky WCS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    except Exception:  # a header whose WCS astropy cannot parse counts as no WCS
        return None, None, None
    if not wcs.has_celestial or wcs.wcs.lngtyp != "RA":
        return None, None, None
    h, w = shape[-2:]
    ra, dec = wcs.pixel_to_world_values((w - 1) / 2.0, (h - 1) / 2.0)
    scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs)))) * 3600.0
    return float(ra) % 360.0, float(dec), scale


def _read_image(path: Path) -> tuple[np.ndarray, object]:
    with contextlib.closing(read_fits(path)) as hdul:
        hdu = first_image_hdu(hdul, path)
        data = np.asarray(hdu.data, dtype=np.float32)
        header = hdu.header.copy()
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    return data, header


def crop_or_pad(image: np.ndarray, size: tuple[int, int], fill: float = np.nan) -> np.ndarray:
    """Centre-crop or pad the last two axes to ``size`` (padding with ``fill``)."""
    out = image
    for axis, target in zip((-2, -1), size, strict=True):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad, constant_values=fill)
    return out


def load_object(
    obj: ObjectFiles,
    bands: tuple[str, ...] = DEFAULT_BANDS,
    cube_bands: tuple[str, ...] | None = None,
    image_size: tuple[int, int] | None = None,
) -> Cutout:
    """Read one object's files into a Cutout in ``bands`` order; InputError/FormatError name the file."""
    if obj.problem:
        raise InputError(obj.problem)
    planes: dict[str, tuple[np.ndarray, Path]] = {}
    headers: dict[str, object] = {}
    zero_points: dict[str, float] = {}
    if obj.cube is not None:
        data, header = _read_image(obj.cube)
        data, zp = ps1.calibrate(data, header, obj.cube)
        if data.ndim == 3:
            names = _cube_band_names(header, data.shape[0], cube_bands, obj.cube)
            planes = {b: (plane, obj.cube) for b, plane in zip(names, data, strict=True)}
        else:
            band = _header_band(header)
            if band is None:
                raise InputError(
                    f"{obj.cube}: a 2-d image with no band in its name or header FILTER; name it "
                    "<objid>_<band>.fits or list it in a catalog CSV"
                )
            planes = {band: (data, obj.cube)}
        headers = dict.fromkeys(planes, header)
        zero_points = dict.fromkeys(planes, zp) if zp is not None else {}
    else:
        for band, path in obj.files.items():
            data, header = _read_image(path)
            if data.ndim != 2:
                raise InputError(f"{path}: expected a 2-d image for band {band}, got shape {data.shape}")
            in_header = _header_band(header)
            if in_header is not None and in_header != band:
                raise InputError(f"{path}: listed as band {band} but its header filter is {in_header}")
            data, zp = ps1.calibrate(data, header, path)
            planes[band], headers[band] = (data, path), header
            if zp is not None:
                zero_points[band] = zp
    unknown = sorted(set(planes) - set(bands))
    if unknown:
        raise InputError(f"object {obj.name}: bands {unknown} are not among the store's bands {bands}")
    shapes = {b: p.shape for b, (p, _) in planes.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{b} {s[0]}x{s[1]} ({planes[b][1]})" for b, s in shapes.items())
        raise InputError(f"object {obj.name}: bands differ in shape: {listed}")
    if not planes:
        raise InputError(f"object {obj.name}: no image for any band (every band cell is empty)")
    first = next(b for b in bands if b in planes)
    header = headers[first]
    h, w = shapes[first]
    image = np.zeros((len(bands), h, w), np.float32)
    mask = np.zeros(len(bands), bool)
    for k, b in enumerate(bands):
        if b in planes:
            image[k], mask[k] = planes[b][0], True
    if image_size is not None:
        image = crop_or_pad(image, image_size)
        image[~mask] = 0.0
    ra, dec, scale = _wcs_position(header, (h, w))
    if obj.ra is not None:
        ra, dec = obj.ra, obj.dec
    source = planes[first][1]
    if ra is None or dec is None or not (np.isfinite(ra) and np.isfinite(dec) and abs(dec) <= 90):
        raise InputError(
            f"{source}: no usable RA/Dec (no celestial WCS and none in a catalog; got {ra}, {dec})"
        )
    object_id = obj.object_id
    if object_id is None:
        found = [(k, header[k]) for k in _ID_KEYS if k in header]
        if found and not (isinstance(found[0][1], int) and not isinstance(found[0][1], bool)
                          and -(2**63) <= found[0][1] < 2**63):
            raise InputError(f"{source}: header {found[0][0]} = {found[0][1]!r} is not an int64 object id")
        object_id = int(found[0][1]) if found else object_id_from_name(obj.name)
    unit = str(header["BUNIT"]) if "BUNIT" in header else None
    return Cutout(int(object_id), float(ra), float(dec), image, mask, scale, unit, zero_points)


def ingest_cutouts(
    inputs: Iterable[str | Path] = (),
    output: str | Path = "cutouts.zarr",
    *,
    catalog: str | Path | None = None,
    cube_bands: tuple[str, ...] | None = None,
    bands: tuple[str, ...] = DEFAULT_BANDS,
    image_size: tuple[int, int] | None = None,
    pixel_scale: float | None = None,
    survey: str = D.INGEST_SURVEY,
    flux_unit: str | None = None,
    zero_point: float | None = None,
    dtype: str = D.INGEST_DTYPE,
    codec: str = D.STORE_CODEC,
    partition_order: int = 6,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
    batch_size: int = 256,
) -> IngestReport:
    """FITS cutouts (files, directories or a catalog CSV) into a new cutout store at ``output``.

    Per-object problems (unreadable file, mismatched band shapes, duplicate id, a shape, pixel
    scale or zero point unlike the store's, PS1 scaling that cannot be undone) are quarantined in
    ``<output>.quarantine.csv`` while the rest go on; with ``strict`` the first problem raises
    instead. Raises InputError when nothing was ingested. ``zero_point`` is the store's in every
    band; header zero points are rescaled onto it (``ps1.ZeroPoints``).
    """
    output = Path(output)
    check_output_free(output, overwrite)
    inputs = list(inputs)
    if catalog is not None and inputs:
        raise InputError("give FITS files or a catalog CSV, not both")
    objects = objects_from_catalog(catalog) if catalog is not None else find_objects(inputs)
    shape, scale = image_size, pixel_scale
    zero_points = ps1.ZeroPoints(tuple(bands), zero_point)
    quarantined: list[Quarantined] = []
    seen: dict[int, str] = {}
    buffer: list[Cutout] = []
    n = 0
    with contextlib.ExitStack() as stack:
        writer = None
        for obj in track(objects, len(objects), "cutouts", progress):
            label = ";".join(str(p) for p in obj.paths) or obj.name
            cut = None
            try:
                cut = load_object(obj, bands, cube_bands, image_size)
                _check_consistent(cut, label, seen, shape, scale)
                zero_points.apply(cut.image, cut.mask, cut.zero_points, flux_unit or cut.unit or "unknown",
                                  label)
            except (GalspecError, FileNotFoundError) as exc:
                if strict:
                    raise
                quarantined.append(Quarantined(label, cut.object_id if cut else obj.object_id, str(exc)))
                continue
            seen[cut.object_id] = label
            shape = shape or cut.image.shape[1:]
            scale = scale or cut.pixel_scale
            if writer is None:
                writer = stack.enter_context(
                    create_store(
                        output,
                        bands=bands,
                        image_shape=shape,
                        pixel_scale=scale,
                        survey=survey,
                        flux_unit=flux_unit or cut.unit or "unknown",
                        zero_points=zero_points.store,
                        dtype=dtype,
                        codec=codec,
                        partition_order=partition_order,
                        overwrite=overwrite,
                    )
                )
            buffer.append(cut)
            if len(buffer) >= batch_size:
                n += _flush(writer, buffer)
        if buffer:
            n += _flush(writer, buffer)
    return finish(output, n, quarantined, len(objects))


def _check_consistent(cut: Cutout, label: str, seen: dict, shape, scale) -> None:
    if cut.object_id in seen:
        raise InputError(f"{label}: duplicate object id {cut.object_id} (also {seen[cut.object_id]})")
    if shape is not None and tuple(cut.image.shape[1:]) != tuple(shape):
        raise InputError(
            f"{label}: image shape {cut.image.shape[1:]} differs from the store's {tuple(shape)} "
            "(pass --image-size to centre-crop/pad)"
        )
    if cut.pixel_scale is None and scale is None:
        raise InputError(f"{label}: no WCS to read the pixel scale from; pass --pixel-scale")
    if (
        cut.pixel_scale is not None
        and scale is not None
        and abs(cut.pixel_scale / scale - 1) > _SCALE_TOLERANCE
    ):
        raise InputError(
            f'{label}: pixel scale {cut.pixel_scale:.4f}"/px differs from the store\'s {scale:.4f}"/px '
            "(cutouts are not resampled)"
        )


def _flush(writer, buffer: list[Cutout]) -> int:
    writer.append(
        np.array([c.object_id for c in buffer], np.int64),
        np.array([c.ra for c in buffer]),
        np.array([c.dec for c in buffer]),
        np.stack([c.image for c in buffer]),
        np.stack([c.mask for c in buffer]),
    )
    n = len(buffer)
    buffer.clear()
    return n
