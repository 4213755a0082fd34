"""Reading a detector folder so that no file in it can steer the reader.

A detector folder travels from the machine that trained it to the one on the line, so its reader
treats every byte as untrusted:

* **A fixed set of names.**  The files are :data:`FILES`, named by this code.  The digest list in
  ``detector.json`` must hold exactly those names; a name there is compared with the set, never
  joined to a path, so ``../x`` or ``/etc/hostname`` only ever appear in an error message.  Other
  entries in the folder (a copied ``notes.txt``, an exported ``.onnx``) are refused too: the folder
  is sealed as fit wrote it.  Hidden names (``.DS_Store``, a writer's temporary file) are ignored.
* **A digest on every file.**  Each file's SHA-256 is checked against the list before its content
  is parsed; ``detector.json`` carries the digest of its own content (:func:`manifest_digest`).
  The bytes that were checked are the bytes that are parsed: each file is read once, into memory.
* **Bounded reads.**  A file is stat-ed first: anything but a regular file (``/dev/zero``, a pipe, a
  folder) is refused, and so is one larger than its cap in :data:`MAX_BYTES`; at most cap + 1 bytes
  are ever read, so a file that grows while it is read cannot exhaust memory either.
* **Strict JSON.**  Duplicate keys, ``NaN`` / ``Infinity`` literals, invalid UTF-8 and nesting too
  deep for the parser are errors.

Every failure is one :class:`~fader_kit.errors.ModelDirError` naming the file.  What the fields may
hold is checked by the pydantic models that read them (:mod:`fader_kit.deploy.detector`,
:mod:`fader_kit.deploy.thresholds`) and by :func:`check_safetensors` for tensor files.

Format versions: 3 adds the detector's score kind (``settings.score``) and the fused score's scales
(in ``calibration.json``), and may add the files of :data:`OPTIONAL_FILES` (``selection.json``),
digested like every other file when the digest list names them; a masker-only detector ships no ``model.safetensors``, and its digest list
must then not name one (:func:`folder_files`): the set is still fixed by this code, per kind, so a
model file in a masker-only folder is refused like any other extra file.  2 digests every file;
1, written before, digests the two tensor files only.  Version 1 and 2 folders still load, with
every field validated the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from fader_kit.errors import ModelDirError

MANIFEST = "detector.json"
CALIBRATION = "calibration.json"
MODEL = "model.safetensors"
MASKER_JSON = "masker.json"
MASKER_TENSORS = "masker.safetensors"
CARD = "README.md"
SELECTION = "selection.json"
#: Every file of a detector folder, in the order they are checked.
#: The ``format`` field of ``detector.json``: what marks a folder as a detector folder.
FORMAT = "fader-kit/detector"
FILES: tuple[str, ...] = (MANIFEST, CALIBRATION, MODEL, MASKER_JSON, MASKER_TENSORS, CARD)
#: Files a folder of format version 3 may add, each digested like the others when it is there:
#: ``selection.json``, the table of every candidate ``fit --score auto`` compared.
OPTIONAL_FILES: tuple[str, ...] = (SELECTION,)
#: The files digested by format version 1 (folders written before every file was).
LEGACY_DIGESTS: tuple[str, ...] = (MODEL, MASKER_TENSORS)

_MiB = 1 << 20
#: The most bytes each file may hold: far above what fit writes (a 256 px paper-profile detector:
#: ~80 MB of weights, a calibration of 100 000 held-out images: ~3 MB), far below what hurts a machine.
MAX_BYTES: dict[str, int] = {MANIFEST: 64 * _MiB, CALIBRATION: 64 * _MiB, MASKER_JSON: 64 * _MiB, CARD: 4 * _MiB,
             SELECTION: 16 * _MiB,
                             MODEL: 2048 * _MiB, MASKER_TENSORS: 4096 * _MiB}
_HEX = frozenset("0123456789abcdef")


def shown(name: object, limit: int = 80) -> str:
    """A name from a file, safe to print on one line: repr, shortened."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_capped(path: Path, cap: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap``; anything else is a ModelDirError.

    The file is stat-ed before it is opened (a device or a pipe is refused without being opened)
    and again through the open descriptor (it may have been swapped in between); the descriptor is
    opened non-blocking, so a pipe swapped in cannot block the open."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelDirError(f"detector folder {path.parent} is incomplete: missing file {path}") from None
    except OSError as exc:
        raise ModelDirError(f"{path} cannot be read ({exc.strerror or exc})") from None
    _check_regular(path, info, cap)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelDirError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        _check_regular(path, os.fstat(fd), cap)
        chunks, total = [], 0
        while total <= cap:
            block = os.read(fd, min(16 * _MiB, cap + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
    except OSError as exc:
        raise ModelDirError(f"{path} cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if total > cap:
        raise ModelDirError(f"{path} grew beyond {cap} bytes while it was read: refused")
    return b"".join(chunks)


def _check_regular(path: Path, info: os.stat_result, cap: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                or stat.S_ISBLK(info.st_mode) else "a pipe" if stat.S_ISFIFO(info.st_mode) else "not a regular file")
        raise ModelDirError(f"{path} is {kind}, not a regular file: refused (a detector folder holds plain files)")
    if info.st_size > cap:
        raise ModelDirError(f"{path} is {info.st_size} bytes, more than the {cap} bytes this file of a detector "
                            "folder may hold: refused")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {shown(key)}")
        out[key] = value
    return out


class _NonFinite:
    """Where the text held ``NaN``, ``Infinity`` or a number too large for a float (``1e999``)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _find_non_finite(node: Any, where: str = "") -> tuple[str, str] | None:
    if isinstance(node, _NonFinite):
        return where, node.text
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _find_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_json(data: bytes, path: Path) -> Any:
    """``data`` as strict JSON (see the module notes); errors name ``path`` and, for a number that
    is not finite, the field."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_NonFinite,
                           parse_float=_float)
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ModelDirError(f"{path} is nested too deeply to be a detector file") from None
    except ValueError as exc:  # JSONDecodeError, and the hooks' refusals
        raise ModelDirError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
    try:
        found = _find_non_finite(value)
    except RecursionError:
        raise ModelDirError(f"{path} is nested too deeply to be a detector file") from None
    if found is not None:
        raise ModelDirError(f"{path}: field {found[0] or '/'}: {shown(found[1], 40)} is not a finite number")
    return value


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of ``detector.json``'s content without its own digest entry, in canonical form (sorted
    keys, no spaces): what ``sha256["detector.json"]`` holds.  Computed on the parsed values, so the
    check covers exactly what the loader then reads."""
    body = dict(manifest)
    sums = body.get("sha256")
    if isinstance(sums, dict):
        body["sha256"] = {k: v for k, v in sums.items() if k != MANIFEST}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def digests_for(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def read_manifest_file(folder: Path) -> dict[str, Any]:
    """``detector.json`` of ``folder`` parsed, its format checked (not yet its version or fields)."""
    if not folder.is_dir():
        raise ModelDirError(f"model folder {folder} does not exist" if not folder.exists()
                            else f"model folder {folder} is not a folder")
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ModelDirError(f"{folder} is not a fader-kit detector folder: missing file {path} "
                            "(made by fader-kit fit --out)")
    raw = parse_json(read_capped(path, MAX_BYTES[MANIFEST]), path)
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path} is not a detector manifest (a JSON object)")
    if raw.get("format") != FORMAT:
        raise ModelDirError(f"{path} is not a fader-kit detector manifest (format {shown(raw.get('format'))}, "
                            f"expected {FORMAT!r})")
    return raw


def folder_files(model: bool = True, optional: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The files of a detector folder: :data:`FILES`, less ``model.safetensors`` for a detector that
    ships no U-Net (``model=False``: the masker alone, format version 3), plus the ``optional``
    files of :data:`OPTIONAL_FILES` it holds (format version 3)."""
    unknown = [name for name in optional if name not in OPTIONAL_FILES]
    if unknown:
        raise ValueError(f"{unknown} are not optional files of a detector folder ({', '.join(OPTIONAL_FILES)})")
    return (*(FILES if model else tuple(name for name in FILES if name != MODEL)), *optional)


def optional_in(sums: dict[str, Any], version: int) -> tuple[str, ...]:
    """The optional files a digest list names (only format version 3 and later may have them)."""
    return tuple(name for name in OPTIONAL_FILES if name in sums) if version >= 3 else ()


def expected_digests(version: int, model: bool = True, optional: tuple[str, ...] = ()) -> tuple[str, ...]:
    return folder_files(model, optional) if version >= 2 else LEGACY_DIGESTS


def check_digest_list(raw: dict[str, Any], folder: Path, version: int, model: bool = True) -> dict[str, str]:
    """The ``sha256`` entry of the manifest, checked against the fixed file set of ``version`` (and
    ``model``: whether the folder ships ``model.safetensors``)."""
    path = folder / MANIFEST
    sums = raw.get("sha256")
    if not isinstance(sums, dict):
        raise ModelDirError(f"{path}: field sha256 must map each file of the folder to its digest")
    expected = expected_digests(version, model, optional_in(sums, version))
    for name in sums:
        if name not in FILES + OPTIONAL_FILES:
            raise ModelDirError(f"{path} lists a digest for {shown(name)}, which is not a file of a detector folder "
                                f"(those are: {', '.join(FILES + OPTIONAL_FILES)})")
        if name not in expected:
            raise ModelDirError(f"{path} lists a digest for {name}, which format version {version} does not digest "
                                f"for this detector (it digests: {', '.join(expected)})")
    for name in expected:
        if name not in sums:
            raise ModelDirError(f"{path} lists no digest for {folder / name}: every file of the folder must be "
                                "covered (was the list edited?)")
        digest = sums[name]
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise ModelDirError(f"{path}: the digest of {name} is not a SHA-256 (64 lowercase hex digits)")
    return sums


def check_no_extra_entries(folder: Path, files: tuple[str, ...] = FILES) -> None:
    """Refuse anything in the folder besides ``files`` (hidden names excepted)."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        raise ModelDirError(f"model folder {folder} cannot be listed ({exc.strerror or exc})") from None
    for name in names:
        if name not in files and not name.startswith("."):
            what = "a file of this detector" if name in FILES + OPTIONAL_FILES else "a file of a detector folder"
            raise ModelDirError(f"detector folder {folder} holds {folder / name}, which is not {what}: move it out "
                                f"(this folder holds exactly {', '.join(files)})")


def read_folder(folder: Path, raw: dict[str, Any], version: int, *, verify: bool = True,
                model: bool = True) -> dict[str, bytes]:
    """The bytes of every file of ``folder`` but the manifest, each checked against its digest
    (``verify=False`` skips the comparison, never the bounds); ``model=False``: a detector without
    ``model.safetensors`` (see :func:`folder_files`)."""
    sums = check_digest_list(raw, folder, version, model)
    if verify and MANIFEST in sums and manifest_digest(raw) != sums[MANIFEST]:
        raise ModelDirError(f"{folder / MANIFEST} was changed after fitting: its content does not match the SHA-256 checksum "
                            "it carries (refit, or restore the folder as fit wrote it)")
    files = folder_files(model, optional_in(sums, version))
    check_no_extra_entries(folder, files)
    out: dict[str, bytes] = {}
    for name in files[1:]:
        path = folder / name
        if name == CARD and name not in sums and not path.exists():
            continue  # format 1: the model card was optional
        data = read_capped(path, MAX_BYTES[name])
        if verify and name in sums and hashlib.sha256(data).hexdigest() != sums[name]:
            raise ModelDirError(f"{path} was changed after fitting: it does not match its SHA-256 checksum in "
                                f"{folder / MANIFEST} (the file was edited or damaged; refit, or restore it)")
        out[name] = data
    return out


# -- safetensors ----------------------------------------------------------------------------------
#: safetensors dtype names and their sizes in bytes (the ones torch reads).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def check_safetensors(data: bytes, path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from the header of a safetensors file, every entry checked (known
    dtype, byte range inside the file and of the size the shape says, ranges not overlapping),
    without building a tensor."""
    if len(data) < 8:
        raise ModelDirError(f"{path} is too short to be a .safetensors file ({len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > 64 * _MiB:
        raise ModelDirError(f"{path} is not a readable .safetensors file (its header claims {size} bytes)")
    header = parse_json(data[8 : 8 + size], path)
    if not isinstance(header, dict):
        raise ModelDirError(f"{path} is not a readable .safetensors file (its header is not a JSON object)")
    body = len(data) - 8 - size
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ModelDirError(f"{path}: tensor {shown(name)} has a malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise ModelDirError(f"{path}: tensor {shown(name)} has dtype {shown(dtype)}, which a detector never holds")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
            raise ModelDirError(f"{path}: tensor {shown(name)} has a malformed shape {shown(shape)}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= body
                or offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]):
            raise ModelDirError(f"{path}: tensor {shown(name)} does not lie where its header says (damaged file)")
        ranges.append((offsets[0], offsets[1]))
        out[name] = (dtype, tuple(shape))
    ranges.sort()
    if any(a_end > b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:])):
        raise ModelDirError(f"{path}: tensors overlap in the file (damaged or crafted file)")
    return out


def safetensors_dtype(dtype: Any) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``F32``)."""
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    return names.get(dtype, str(dtype))


def load_tensors(data: bytes, path: Path) -> dict[str, Any]:
    """The tensors of a checked safetensors file (:func:`check_safetensors` first); every floating
    tensor must be finite (a NaN weight silently makes every score NaN, and nothing is flagged)."""
    import torch
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelDirError(f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelDirError(f"{path}: tensor {shown(name)} holds values that are not finite (NaN or infinite)")
    return tensors
