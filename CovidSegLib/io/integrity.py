"""File integrity: refuse a truncated or corrupt volume file before any reader fills the gap with zeros.

SimpleITK reads a truncated NIfTI (plain or gzip) without a word and pads the missing voxels with 0, which is
water in HU: a CT whose lower half is gone is then segmented as if whole. Every container here states how many
bytes of voxel data it holds (dimensions times voxel size), so each file is checked against its own header: the
data must be all there and a compressed stream must end with its end marker (and its checksum, for gzip).
These checks read the file once more, which costs a fraction of a second against a silent wrong answer.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

from ..errors import InputError

CHUNK = 1 << 20
Compression = Literal["none", "gzip", "zlib"]

NIFTI_DATATYPE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8,
                        1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4}
METAIMAGE_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                        "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
                        "MET_FLOAT": 4, "MET_DOUBLE": 8}
NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"), 8),
}


@dataclass(frozen=True)
class Payload:
    """Where a file's voxel data is, how it is stored, and how many bytes the header says it holds."""

    path: Path
    offset: int  # bytes before the data (or the compressed stream); -1: the data ends the file (raw only)
    compression: Compression
    expected: int  # bytes of data (for a .nii.gz, of the whole stream: header and data)
    shape: str  # e.g. "128x128x34 voxels of 2 bytes", for the message


def check_file_integrity(path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` if its voxel data is cut short or its compression is corrupt.

    Files whose header this module cannot interpret (not a NIfTI/NRRD/MetaImage header at all, a NRRD with a list
    of data files, a DICOM file) are left to the reader, which refuses what it cannot read."""
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        payload = _nifti_gz_payload(path) if _is_gzip(path) else _nifti_payload(path, _head(path), "none")
    elif name.endswith((".mha", ".mhd")):
        payload = _metaimage_payload(path)
    elif name.endswith((".nrrd", ".nhdr")):
        payload = _nrrd_payload(path)
    else:
        return
    if payload is not None:
        _check_payload(path, payload)


def _head(path: Path, size: int = 540) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _is_gzip(path: Path) -> bool:
    return _head(path, 2) == b"\x1f\x8b"


def _nifti_payload(path: Path, header: bytes, compression: Compression) -> Payload | None:
    """The data a NIfTI-1 or NIfTI-2 header announces: ``vox_offset`` plus dimensions times the voxel size."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            datatype, bitpix = struct.unpack(f"{endian}hh", header[70:74])
            offset = max(int(struct.unpack(f"{endian}f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(f"{endian}hh", header[12:16])
            dims = struct.unpack(f"{endian}8q", header[16:80])
            offset = max(struct.unpack(f"{endian}q", header[168:176])[0], 544)
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or min(dims[1:dims[0] + 1]) < 1:
        raise InputError(path, f"damaged NIfTI header: dimensions {list(dims[:dims[0] + 1])}")
    voxel_bytes = NIFTI_DATATYPE_BYTES.get(datatype, max(bitpix, 8) // 8)
    size = dims[1:dims[0] + 1]
    return Payload(path, offset, compression, math.prod(size) * voxel_bytes,
                   f"{'x'.join(map(str, size))} voxels of {voxel_bytes} bytes")


def _nifti_gz_payload(path: Path) -> Payload | None:
    """A ``.nii.gz`` header is inside the compressed stream: read it from the first decompressed block."""
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        header = b""  # too damaged to show a header: the full decompression below says what is wrong
    payload = _nifti_payload(path, header, "gzip")
    if payload is None:
        return Payload(path, 0, "gzip", 0, "an unreadable header")
    return Payload(path, 0, "gzip", payload.offset + payload.expected,
                   f"{payload.shape} after {payload.offset} bytes of header")


def _inflate_file(path: Path, offset: int) -> Iterator[bytes]:
    """Decompressed blocks of ``path`` from ``offset`` (a gzip or zlib stream); raise :class:`InputError` if the
    stream is cut short or corrupt (zlib checks gzip's CRC and length, and zlib's Adler-32)."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # accepts a zlib or a gzip header
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            for block in iter(lambda: handle.read(CHUNK), b""):
                yield inflater.decompress(block)
                if inflater.eof:
                    return
    except zlib.error as error:
        raise InputError(path, f"damaged: the compressed data is corrupt ({error})") from None
    raise InputError(path, "truncated: the compressed data ends before its end marker (the file was cut short, "
                           "e.g. by an interrupted copy or download)")


def _check_payload(path: Path, payload: Payload) -> None:
    """Compare the bytes present (after decompression) with what the header announces."""
    if payload.compression != "none":
        present = sum(len(block) for block in _inflate_file(payload.path, payload.offset))
        _compare_sizes(path, payload, present, "decompressed data")
        return
    size = payload.path.stat().st_size
    _compare_sizes(path, payload, size if payload.offset < 0 else size - payload.offset, "data")


def _compare_sizes(path: Path, payload: Payload, present: int, what: str) -> None:
    if present < payload.expected:
        where = "" if payload.path == path else f" in {payload.path.name}"
        raise InputError(
            path, f"truncated: the header describes {payload.shape} ({payload.expected} bytes) but the {what}"
                  f"{where} holds only {max(present, 0)} bytes ({100 * max(present, 0) / payload.expected:.1f}%); "
                  "the file was cut short, e.g. by an interrupted copy or download")


def _header_lines(handle: BinaryIO, limit: int = 1 << 16) -> Iterator[tuple[str, int]]:
    """Text lines of a file's header with the offset just after each, read up to ``limit`` bytes."""
    position = 0
    while position < limit:
        line = handle.readline(limit)
        if not line:
            return
        position += len(line)
        yield line.decode("latin-1").rstrip("\r\n"), position


def _metaimage_payload(path: Path) -> Payload | None:
    """MetaImage (``.mha``/``.mhd``): ``Key = Value`` lines, the last one ``ElementDataFile``."""
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        for line, end in _header_lines(handle):
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        else:
            return None
    data_file, element = fields["ElementDataFile"], fields.get("ElementType", "")
    if element not in METAIMAGE_TYPE_BYTES or data_file.upper() == "LIST" or "%" in data_file or " " in data_file:
        return None
    sizes = [int(v) for v in fields.get("DimSize", "").split()]
    voxel_bytes = METAIMAGE_TYPE_BYTES[element] * int(fields.get("ElementNumberOfChannels", "1"))
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if data_file.upper() == "LOCAL":
        target, offset = path, end
    else:
        target, offset = path.parent / data_file, int(fields.get("HeaderSize", "0"))
        if not target.is_file():
            raise InputError(path, f"its data file {data_file} is missing")
    return Payload(target, offset, "zlib" if compressed else "none", math.prod(sizes) * voxel_bytes,
                   f"{'x'.join(map(str, sizes))} voxels of {voxel_bytes} bytes")


def _nrrd_payload(path: Path) -> Payload | None:
    """NRRD: ``field: value`` lines up to a blank line; raw or gzip data follows, or lies in a ``data file``."""
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        lines = _header_lines(handle)
        first, end = next(lines, ("", 0))
        if not first.startswith("NRRD"):
            return None
        for line, end in lines:
            if not line:
                break
            if not line.startswith("#") and ": " in line:
                key, value = line.split(": ", 1)
                fields[key.strip().lower()] = value.strip()
    encoding = {"raw": "none", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", ""))
    element = fields.get("type", "").lower()
    if encoding is None or element not in NRRD_TYPE_BYTES or int(fields.get("line skip", "0")) != 0:
        return None
    sizes = [int(v) for v in fields.get("sizes", "").split()]
    data_file = fields.get("data file", fields.get("datafile"))
    target, offset = path, end
    if data_file is not None:
        if data_file.upper().startswith("LIST") or " " in data_file:
            return None
        target, offset = path.parent / data_file, 0
        if not target.is_file():
            raise InputError(path, f"its data file {data_file} is missing")
    if encoding == "none":  # a byte skip applies to raw data; -1 means the data ends the file
        skip = int(fields.get("byte skip", "0"))
        offset = -1 if skip == -1 else offset + skip
    return Payload(target, offset, encoding, math.prod(sizes) * NRRD_TYPE_BYTES[element],
                   f"{'x'.join(map(str, sizes))} samples of {NRRD_TYPE_BYTES[element]} bytes")
