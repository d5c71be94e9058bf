"""Loading snapshot artifacts (``.pt2``) so that nothing in them is unpickled or run as code.

The contract allows one loader, ``torch.export.load``. In torch 2.13 that
loader itself reaches code execution through several parts of an archive, so
:func:`check_archive` reads the bytes first and refuses every archive that
would take one of those paths (read in ``torch/export/pt2_archive/_package.py``,
``torch/_export/serde/serialize.py``, ``torch/export/_unlift.py`` and
``torch/fx/graph.py``):

- tensors saved with ``use_pickle`` (``torch.load(weights_only=False)``),
  legacy ``data/weights|constants/model.pt`` files, torchbind ``custom_obj_``
  constants and ``opaque_obj_`` constants (``pickle.loads``);
- the sample inputs, which are a ``torch.save`` pickle loaded with
  ``weights_only=True`` and, if that fails, ``weights_only=False``: their
  pickle may only name :data:`TENSOR_GLOBALS`, the globals of torch's own
  ``weights_only`` unpickler that rebuild tensors (checked by disassembling it
  with :mod:`pickletools`, not by running it), so the fallback has nothing
  more to import than ``weights_only`` has;
- AOTInductor packages (native shared libraries) and other model folders;
- graph names, placeholder names and ``forward_arg_names``, which FX pastes
  into the Python source it compiles: each must be an identifier;
- node targets, resolved by attribute lookup under ``torch``: only operators
  (``torch.ops`` overloads, higher-order operators, symbolic-int operators);
- symbolic expressions (``sympy.sympify``, i.e. ``eval``) and guard code
  (``exec``): each must parse to a small expression grammar.

The zip container is checked too: a pickle or a non-zip file, truncated
archives, CRC errors, absolute or ``..`` entry names, duplicate entries,
encryption, and a total uncompressed size above a limit (zip bombs). The
checked bytes are the ones loaded, so nothing can change in between.

Every read of a snapshot file goes through these checks: whole programs
through :func:`load_snapshot` / :func:`load_artifact`, and weights one
tensor at a time (weight diffs of large snapshots) through
:class:`SnapshotWeights` / :func:`artifact_weights`, which read the raw
tensor entries of a checked archive and never build the program.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import math
import operator
import pickletools
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, NamedTuple

import sympy
import torch
from torch._export.serde.schema import ScalarType
from torch._export.serde.serialize import _SYM_OPS, deserialize_scalar_type
from torch._weights_only_unpickler import _get_allowed_globals
from torch.export.pt2_archive import constants as pt2
from torch.serialization import StorageType

from hawkeye_dagster.errors import BadSnapshotError
from hawkeye_dagster.lake.reader import TelemetryReader

#: largest archive (compressed or uncompressed) that is read, in bytes
MAX_ARCHIVE_BYTES = 2 * 1024**3

_MODEL = "model"
_WEIGHTS_CONFIG = pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL)
_CONSTANTS_CONFIG = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL)
_PROGRAM = pt2.MODELS_FILENAME_FORMAT.format(_MODEL)
_SAMPLE_INPUTS = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL)
_REQUIRED = (pt2.ARCHIVE_FORMAT_PATH, pt2.ARCHIVE_VERSION_PATH, _PROGRAM, _WEIGHTS_CONFIG,
             _CONSTANTS_CONFIG, _SAMPLE_INPUTS)
#: every entry (below the archive's root folder) that torch.export.save writes
_ENTRIES = re.compile("|".join([
    *map(re.escape, _REQUIRED), r"byteorder", r"\.data/version", r"\.data/serialization_id",
    re.escape(pt2.WEIGHTS_DIR + pt2.WEIGHT_FILENAME_PREFIX) + r"\d+",
    re.escape(pt2.CONSTANTS_DIR + pt2.TENSOR_CONSTANT_FILENAME_PREFIX) + r"\d+",
    re.escape(pt2.EXTRA_DIR) + r"[^/]+",
]))
#: the entries of a torch.save archive holding plain tensors (the sample inputs)
_TENSOR_ENTRIES = re.compile(r"data\.pkl|data/\d+|version|byteorder|\.format_version"
                             r"|\.storage_alignment|\.data/serialization_id|\.data/version")
#: what rebuilds a tensor in a ``torch.save`` pickle of example inputs
_TENSOR_REBUILDERS = (
    torch._utils._rebuild_tensor_v2,
    torch._tensor._rebuild_from_type_v2,  # a tensor with attributes (Dim.DYNAMIC marks one)
    torch._utils._rebuild_parameter,
    torch._utils._rebuild_parameter_with_state,
    torch.Tensor, torch.nn.Parameter, torch.Size, OrderedDict,
)
#: the globals the sample-inputs pickle may name: those of torch's ``weights_only``
#: unpickler (by its names) that are tensor rebuilders or storage types, never more
TENSOR_GLOBALS = frozenset(name for name, obj in _get_allowed_globals().items()
                           if isinstance(obj, StorageType) or obj in _TENSOR_REBUILDERS)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_MEMO_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
#: where torch's deserializer looks node targets up (``torch.ops.*`` aside)
_TARGET_ROOTS = {"_operator": operator, "math": math, "torch": torch}



@dataclass(frozen=True)
class _Grammar:
    """A small expression language: literals, arithmetic, comparisons, and what is listed here."""

    names: frozenset[str]
    calls: frozenset[str]
    #: attribute names allowed (as method calls too)
    attributes: frozenset[str] = frozenset()
    subscripts: bool = False
    #: bare names outside ``names`` that are still inert (sympify makes them Symbols)
    other_names: bool = False


# Symbolic expressions: sympy constructors and torch's sympy functions over literals.
_SYMPY = _Grammar(
    names=frozenset({"oo", "zoo", "nan", "true", "false", "int_oo"}),
    calls=frozenset({
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
        "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
        "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And",
        "Or", "Not", "Piecewise", "ExprCondPair", "ITE", "IntInfinity", "NegativeIntInfinity",
        *torch.utils._sympy.functions.__all__}),
    other_names=True,
)
# Guards: comparisons of input sizes, e.g. ``L['x'].size()[0] <= 64``.
_GUARD = _Grammar(
    names=frozenset({"L", "math"}), calls=frozenset({"max", "min", "abs"}),
    attributes=frozenset({"size", "stride", "storage_offset", "isnan", "floor", "ceil", "trunc",
                          "sqrt", "inf"}),
    subscripts=True,
)
_PLAIN_NODES = (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                ast.Tuple, ast.List, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


@dataclass(frozen=True)
class SnapshotSignature:
    """What the contract fixes about a program's interface."""

    #: F, the width of the single ``[batch, F]`` float32 input
    n_features: int
    #: the output shape: ``[batch]`` or ``[batch, 1]``
    output: Literal["batch", "batch_1"]


def load_snapshot(source: str | Path | BinaryIO, *, snapshot_id: str | None = None,
                  name: str | None = None,
                  max_bytes: int = MAX_ARCHIVE_BYTES) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` snapshot through ``torch.export.load`` after :func:`check_archive`.

    ``source`` is a local path or a binary file object (read whole, once);
    ``name`` is what errors call it (default: the path, or the object's
    ``name``). Raises :class:`BadSnapshotError` naming the file for anything
    that is not a safe ``torch.export`` archive or does not load.
    """
    if isinstance(source, (str, Path)):
        name = name or str(source)
        try:
            with open(source, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise BadSnapshotError(f"cannot read: {exc.strerror or exc}", file=name,
                                   snapshot_id=snapshot_id) from exc
    else:
        name = name or str(getattr(source, "name", None) or "<snapshot stream>")
        data = source.read(max_bytes + 1)
    check_archive(data, name=name, snapshot_id=snapshot_id, max_bytes=max_bytes)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # whatever the deserializer trips on, the file is at fault
        raise BadSnapshotError(f"torch.export.load failed: {type(exc).__name__}: {exc}"[:500],
                               file=name, snapshot_id=snapshot_id) from exc


def load_artifact(reader: TelemetryReader, artifact: str, *,
                  snapshot_id: str | None = None) -> torch.export.ExportedProgram:
    """Load the artifact named in ``snapshots.artifact`` of a lake (a missing file is bad input)."""
    name, fh = _open_artifact(reader, artifact, snapshot_id)
    with fh:
        return load_snapshot(fh, snapshot_id=snapshot_id, name=name)


def _open_artifact(reader: TelemetryReader, artifact: str,
                   snapshot_id: str | None) -> tuple[str, BinaryIO]:
    """An artifact's name (path or URL) and open file; a missing file is bad input."""
    name = reader.resolve_artifact(artifact)
    try:
        return name, reader.open_artifact(artifact)
    except OSError as exc:
        raise BadSnapshotError(f"artifact file missing or unreadable: {exc}", file=name,
                               snapshot_id=snapshot_id) from exc


class _Record(NamedTuple):
    """Where a state-dict tensor's raw bytes are in the archive, and how to view them."""

    entry: zipfile.ZipInfo
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    is_param: bool


class SnapshotWeights:
    """The parameters and buffers of a ``.pt2`` snapshot, read one at a time, never unpickled.

    The names are :func:`state_dict_tensors`' (non-persistent buffers, saved
    among the constants, included). The archive passes :func:`check_archive`
    first, then each tensor is read from its raw entry (what
    ``torch.export.load`` reads) without building the program. ``source`` is a
    path, the archive's bytes or a binary file object; a seekable file is read
    in place, not whole into memory, so memory stays near one tensor per open
    snapshot. Each tensor's bytes are checked against the CRC of the entry as
    checked, so a file that changes in between is refused rather than read.
    Use it as a context manager, or :meth:`close` it, to release a file it
    opened (or was given with ``close_source``). Anything wrong is a
    :class:`BadSnapshotError` naming ``name``.
    """

    #: bytes read from the archive at a time
    CHUNK = 16 * 1024**2

    def __init__(self, source: str | PathLike | bytes | BinaryIO, *, name: str | None = None,
                 snapshot_id: str | None = None, max_bytes: int = MAX_ARCHIVE_BYTES,
                 close_source: bool = False):
        self._file = None
        if isinstance(source, (str, PathLike)):
            #: what errors call the archive
            self.path = name or str(source)
            try:
                self._file = stream = open(source, "rb")
            except OSError as exc:
                raise BadSnapshotError(f"cannot read: {exc.strerror or exc}", file=self.path,
                                       snapshot_id=snapshot_id) from exc
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.path, stream = name or "<snapshot bytes>", source
        else:
            self._file = source if close_source else None
            self.path = name or str(getattr(source, "name", None) or "<snapshot stream>")
            seekable = getattr(source, "seekable", None)
            stream = source if seekable is not None and seekable() else source.read(max_bytes + 1)
        self._refuse = _refuser(self.path, snapshot_id)
        try:
            # each entry's CRC is checked as it is read: no separate pass over the archive
            self._archive, entries = _open_checked(stream, self._refuse, max_bytes,
                                                   crc_on_read=True)
            weights = _json(entries[_WEIGHTS_CONFIG], self._refuse)["config"]
            constants = _json(entries[_CONSTANTS_CONFIG], self._refuse)["config"]
            buffers = _non_persistent_buffers(_json(entries[_PROGRAM], self._refuse), self._refuse)
            self._records = {
                **{fqn: self._record(fqn, meta, pt2.WEIGHTS_DIR, entries)
                   for fqn, meta in weights.items()},
                **{fqn: self._record(fqn, constants.get(fqn), pt2.CONSTANTS_DIR, entries)
                   for fqn in buffers},
            }
        except BaseException:
            self.close()
            raise
        self.names = tuple(self._records)

    def _record(self, fqn: str, meta: dict | None, folder: str,
                entries: dict[str, _Entry]) -> _Record:
        try:
            tensor = meta["tensor_meta"]
            return _Record(
                entries[folder + meta["path_name"]].info,
                deserialize_scalar_type(ScalarType(tensor["dtype"])),
                tuple(int(d["as_int"]) for d in tensor["sizes"]),
                tuple(int(d["as_int"]) for d in tensor["strides"]),
                int(tensor["storage_offset"]["as_int"]),
                bool(meta["is_param"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refuse(f"tensor {fqn!r} has malformed metadata ({exc!r})") from None

    def is_param(self, name: str) -> bool:
        return self._records[name].is_param

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, in memory of its own (safe to modify)."""
        r = self._records[name]
        if r.offset < 0 or min(r.size, default=0) < 0 or min(r.stride, default=0) < 0:
            raise self._refuse(f"tensor {name!r} has a negative size, stride or offset")
        if not math.prod(r.size):
            return torch.empty(r.size, dtype=r.dtype)
        nbytes = r.entry.file_size
        numel = nbytes // torch.empty((), dtype=r.dtype).element_size()
        extent = r.offset + sum((n - 1) * s for n, s in zip(r.size, r.stride)) + 1
        if extent > numel:
            raise self._refuse(f"tensor {name!r} needs {extent} values, its entry holds {numel}")
        buffer = bytearray(nbytes)
        with memoryview(buffer) as view:
            try:
                complete = self._read_into(r.entry, view)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
                raise self._refuse(f"tensor {name!r} unreadable: {exc}") from None
        if not complete:
            raise self._refuse(f"tensor {name!r}: its entry changed since it was checked")
        flat = torch.frombuffer(buffer, dtype=r.dtype, count=numel)
        return torch.as_strided(flat, r.size, r.stride, r.offset)

    def _read_into(self, info: zipfile.ZipInfo, view: memoryview) -> bool:
        """Fill ``view`` with an entry's bytes; whether they were all there and match its CRC.

        A stored entry (what ``torch.export.save`` writes) is read straight into ``view``
        after its local header is checked as ``zipfile`` checks it; others go through
        ``zipfile`` (which checks the CRC itself) a chunk at a time.
        """
        done = 0
        if info.compress_type == zipfile.ZIP_STORED:
            fp = self._archive.fp
            fp.seek(info.header_offset)
            header = fp.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                return False
            name_length, extra_length = struct.unpack("<2H", header[26:])
            encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
            if fp.read(name_length).decode(encoding) != info.orig_filename:
                return False
            fp.seek(extra_length, io.SEEK_CUR)
            while done < len(view):
                got = fp.readinto(view[done:])
                if not got:
                    break
                done += got
            return done == len(view) and zlib.crc32(view) == info.CRC
        with self._archive.open(info) as fh:  # checks the CRC on reaching the end
            while done < len(view):
                chunk = fh.read(min(self.CHUNK, len(view) - done))
                if not chunk:
                    break
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            return done == len(view) and not fh.read(1)

    def close(self) -> None:
        """Release the archive, and the file if it opened one."""
        archive = getattr(self, "_archive", None)
        if archive is not None:
            archive.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> SnapshotWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def artifact_weights(reader: TelemetryReader, artifact: str, *,
                     snapshot_id: str | None = None) -> SnapshotWeights:
    """:class:`SnapshotWeights` of the artifact named in ``snapshots.artifact`` of a lake, reading
    its file in place (close it when done; a missing file is bad input)."""
    name, fh = _open_artifact(reader, artifact, snapshot_id)
    return SnapshotWeights(fh, name=name, snapshot_id=snapshot_id, close_source=True)


def check_archive(data: bytes | BinaryIO, *, name: str, snapshot_id: str | None = None,
                  max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Refuse, with :class:`BadSnapshotError`, an archive that is not a safe ``torch.export`` one.

    ``data`` is the archive's bytes or a seekable binary file (read from its
    start, left open). See the module docstring for what is checked and why.
    Reads the bytes only: nothing is unpickled, imported, compiled or evaluated.
    """
    archive, _ = _open_checked(data, _refuser(name, snapshot_id), max_bytes)
    archive.close()


def _refuser(name: str, snapshot_id: str | None):
    def refuse(reason: str) -> BadSnapshotError:
        return BadSnapshotError(reason, file=name, snapshot_id=snapshot_id)

    return refuse


def _open_checked(data: bytes | BinaryIO, refuse, max_bytes: int, *,
                  crc_on_read: bool = False) -> tuple[zipfile.ZipFile, dict[str, _Entry]]:
    """The archive, open, and its entries below the root folder, once every check passed.

    ``crc_on_read``: the caller checks each entry's CRC when it reads the entry (as
    ``ZipFile.read`` does), so the whole archive is not read once more up front.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        size, head, stream = len(data), bytes(data[:1]), io.BytesIO(data)
    else:
        stream = data
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        head = stream.read(1)
        stream.seek(0)
    if size > max_bytes:
        raise refuse(f"larger than the {max_bytes}-byte limit")
    if head == b"\x80":
        raise refuse("a pickle, not a torch.export archive: refused unread")
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        raise refuse("not a zip archive: truncated, or not a torch.export .pt2 file") from None
    try:
        return archive, _check_entries(archive, refuse, max_bytes, crc_on_read)
    except BaseException:
        archive.close()
        raise


def _check_entries(archive: zipfile.ZipFile, refuse, max_bytes: int,
                   crc_on_read: bool = False) -> dict[str, _Entry]:
    """Everything :func:`check_archive` checks inside the zip container."""
    entries = _entries(archive, refuse, max_bytes, crc_on_read)
    pickles = [e for e in entries if e.endswith(".pkl")]
    if pickles:
        raise refuse(f"holds pickle entry {pickles[0]!r} (a torch.save archive?): refused")
    unexpected = [e for e in entries if not _ENTRIES.fullmatch(e)]
    if unexpected:
        raise refuse(f"entry {unexpected[0]!r} is not part of a plain torch.export archive "
                     "(native code, pickled objects or a second program): refused")
    missing = [e for e in _REQUIRED if e not in entries]
    if missing:
        raise refuse(f"not a torch.export archive: no {missing[0]!r} entry")
    if entries[pt2.ARCHIVE_FORMAT_PATH].read().strip() != pt2.ARCHIVE_FORMAT_VALUE.encode():
        raise refuse("not a torch.export archive: wrong archive_format")
    for config, folder, prefix in [
        (_WEIGHTS_CONFIG, pt2.WEIGHTS_DIR, pt2.WEIGHT_FILENAME_PREFIX),
        (_CONSTANTS_CONFIG, pt2.CONSTANTS_DIR, pt2.TENSOR_CONSTANT_FILENAME_PREFIX),
    ]:
        _check_payload(_json(entries[config], refuse), folder, prefix, entries, refuse)
    _check_tensor_pickle(entries[_SAMPLE_INPUTS].read(), refuse)
    _check_program(_json(entries[_PROGRAM], refuse), refuse)
    return entries


class _Entry:
    """An archive member, read on demand."""

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
        self.archive, self.info = archive, info

    def read(self) -> bytes:
        return self.archive.read(self.info)


def _entries(archive: zipfile.ZipFile, refuse, max_bytes: int,
             crc_on_read: bool = False) -> dict[str, _Entry]:
    """The archive's files by name below its single root folder, after container checks."""
    infos = [i for i in archive.infolist() if not i.is_dir()]
    names = [i.filename for i in infos]
    for n in names:
        parts = PurePosixPath(n).parts
        if n.startswith("/") or "\\" in n or ".." in parts or ":" in parts[0] or not parts:
            raise refuse(f"unsafe entry name {n!r}: refused")
    if len(set(names)) != len(names):
        raise refuse("duplicate entry names: refused")
    roots = {PurePosixPath(n).parts[0] for n in names}
    if len(roots) != 1 or any(len(PurePosixPath(n).parts) < 2 for n in names):
        raise refuse("not a torch.export archive: entries are not under one root folder")
    if any(i.flag_bits & 0x1 for i in infos):
        raise refuse("encrypted entries: refused")
    if any(i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for i in infos):
        raise refuse("unsupported compression: refused")
    if sum(i.file_size for i in infos) > max_bytes:
        raise refuse(f"uncompressed size above the {max_bytes}-byte limit: refused")
    try:
        bad = None if crc_on_read else archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise refuse(f"corrupt archive: {exc}") from None
    if bad is not None:
        raise refuse(f"corrupt entry {bad!r} (CRC mismatch)")
    root = roots.pop()
    return {i.filename[len(root) + 1:]: _Entry(archive, i) for i in infos}


def _json(entry: _Entry, refuse):
    try:
        return json.loads(entry.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(f"entry {entry.info.filename!r} is not JSON: {exc}") from None


def _check_payload(config, folder: str, prefix: str, entries, refuse) -> None:
    """Every tensor of a weights/constants config must be raw bytes in an entry of the archive."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise refuse(f"malformed {folder} config")
    for fqn, meta in config["config"].items():
        path = meta.get("path_name", "") if isinstance(meta, dict) else ""
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise refuse(f"tensor {fqn!r} is stored as a pickle (or unknown): refused")
        if not re.fullmatch(re.escape(prefix) + r"\d+", str(path)) or folder + path not in entries:
            raise refuse(f"tensor {fqn!r} points at {path!r}, not a raw tensor entry: refused")


def _non_persistent_buffers(program, refuse) -> list[str]:
    """The state-dict names of a serialized program's non-persistent buffers."""
    try:
        specs = program["graph_module"]["signature"]["input_specs"]
        return [spec["buffer"]["buffer_name"] for spec in specs
                if "buffer" in spec and not spec["buffer"]["persistent"]]
    except (KeyError, TypeError) as exc:
        raise refuse(f"program signature is malformed ({exc!r})") from None


def _check_tensor_pickle(blob: bytes, refuse) -> None:
    """The sample inputs must be a torch.save archive whose pickle names only tensor globals."""
    try:
        inner = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise refuse("sample inputs are not a torch.save zip archive: refused") from None
    with inner:
        names = inner.namelist()
        roots = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
        root = roots.pop() if len(roots) == 1 else None
        below = [n[len(root) + 1:] if root else n for n in names]
        if root is None or not all(_TENSOR_ENTRIES.fullmatch(n) for n in below) \
                or "data.pkl" not in below:
            raise refuse("sample inputs hold more than plain tensors: refused")
        pickled = inner.read(f"{root}/data.pkl")
    try:
        for name in _pickle_globals(pickled):
            if name not in TENSOR_GLOBALS:
                raise refuse(f"sample inputs pickle names {name!r}, not a global that torch's "
                             "weights_only unpickler allows for tensors: refused")
    except ValueError as exc:
        raise refuse(f"sample inputs pickle cannot be checked: {exc}") from None


def _pickle_globals(data: bytes) -> Iterator[str]:
    """The ``module.name`` of every global a pickle imports, read from its opcodes."""
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            yield arg.replace(" ", ".")
        elif op.name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise ValueError("STACK_GLOBAL operands do not come from literals")
            yield f"{strings[-2]}.{strings[-1]}"
        elif op.name.startswith("EXT"):
            raise ValueError("extension-registry opcodes")
        if op.name in _STRING_OPS:
            strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
        elif op.name not in _MEMO_OPS:
            strings.clear()


def _check_program(doc, refuse) -> None:
    """Names, targets, symbolic expressions and guards of the serialized program are inert."""
    for key, value in _items(doc):
        if key in ("name", "as_name") and isinstance(value, str):
            if value and not value.isidentifier():
                raise refuse(f"graph name {value!r} is not an identifier: refused")
        elif key == "forward_arg_names" and isinstance(value, list):
            if not all(isinstance(v, str) and v.isidentifier() for v in value):
                raise refuse(f"forward argument names {value!r} are not identifiers: refused")
        elif key == "target" and isinstance(value, str):
            if not _is_operator(value):
                raise refuse(f"graph node target {value!r} is not an operator: refused")
        elif key == "expr_str":
            if not (isinstance(value, str) and _is_plain(value, _SYMPY)):
                raise refuse(f"symbolic expression {value!r} is not plain: refused")
    guards = doc.get("guards_code", []) if isinstance(doc, dict) else []
    for guard in guards:
        if not (isinstance(guard, str) and _is_plain(guard, _GUARD)):
            raise refuse(f"guard {guard!r} is not a plain size check: refused")


def _items(node) -> Iterator[tuple[str, object]]:
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield from node.items()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _is_operator(target: str) -> bool:
    """Whether a serialized node target resolves (as torch resolves it) to an operator."""
    parts = target.split(".")
    if any(p.startswith("__") for p in parts):
        return False
    if target.startswith("torch.ops."):
        obj, parts = torch.ops, parts[2:]
    elif parts[0] in _TARGET_ROOTS:
        obj, parts = _TARGET_ROOTS[parts[0]], parts[1:]
    else:
        return False
    for part in parts:
        obj = getattr(obj, part, None)
    return (isinstance(obj, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
            or obj in _SYM_OPS or obj is operator.getitem)


def _is_plain(text: str, grammar: _Grammar) -> bool:
    """Whether ``text`` parses to an expression of ``grammar`` (nothing is evaluated)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, _PLAIN_NODES):
            continue
        if isinstance(node, ast.Name):
            ok = node.id in grammar.names or node.id in grammar.calls or (
                grammar.other_names and not node.id.startswith("_")
                and node.id not in vars(sympy) and node.id not in vars(builtins))
        elif isinstance(node, ast.Call):
            func = node.func
            ok = ((isinstance(func, ast.Name) and func.id in grammar.calls)
                  or (isinstance(func, ast.Attribute) and func.attr in grammar.attributes))
        elif isinstance(node, ast.keyword):
            ok = isinstance(node.value, ast.Constant)
        elif isinstance(node, ast.Attribute):
            ok = node.attr in grammar.attributes
        elif isinstance(node, ast.Subscript):
            ok = grammar.subscripts
        else:
            ok = False
        if not ok:
            return False
    return True


def snapshot_signature(program: torch.export.ExportedProgram, *,
                       name: str = "<program>") -> SnapshotSignature:
    """The contract's interface of a loaded program: one ``[batch, F]`` float32 input with a
    dynamic batch, and a ``[batch]`` or ``[batch, 1]`` output; else :class:`BadSnapshotError`."""
    signature = program.graph_signature
    inputs = [n.meta.get("val") for n in program.graph.nodes
              if n.op == "placeholder" and n.name in signature.user_inputs]
    output = next(n for n in program.graph.nodes if n.op == "output").args[0]
    outputs = [o.meta.get("val") for o in output if hasattr(o, "meta")
               and o.name in signature.user_outputs]
    x = inputs[0] if len(inputs) == 1 else None
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.dtype == torch.float32
            and isinstance(x.shape[0], torch.SymInt) and isinstance(x.shape[1], int)):
        raise BadSnapshotError("the program's input is not one float32 [batch, F] tensor "
                               "with a dynamic batch", file=name)
    y = outputs[0] if len(outputs) == 1 else None
    if not (isinstance(y, torch.Tensor) and (y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1))):
        raise BadSnapshotError("the program's output is not [batch] or [batch, 1]", file=name)
    return SnapshotSignature(int(x.shape[1]), "batch" if y.dim() == 1 else "batch_1")


def state_dict_tensors(program: torch.export.ExportedProgram) -> Iterator[tuple[str, torch.Tensor]]:
    """Each parameter and buffer of a program by its state-dict name (views, not copies).

    The whole state dict, including what the graph does not use (a strict export
    leaves ``BatchNorm``'s ``num_batches_tracked`` out of its signature), then the
    non-persistent buffers, which live among the program's constants: snapshots
    of one model yield the same names however they were exported.
    """
    for name, tensor in program.state_dict.items():
        yield name, tensor.detach()
    for name in program.graph_signature.non_persistent_buffers:
        yield name, program.constants[name].detach()
