"""What a job wrote to COS and what failed inside it, read from its Operation node.

Where Tencent reports outputs, by job kind:

- ``MediaResult.OutputFile[]``: Bucket, Region, ``ObjectPrefix`` and one or many
  ``ObjectName`` (Snapshot, SmartCover and Segment give several), ``Md5Info`` (one or many
  ``{Md5, ObjectName}``), and ``SpriteOutputFile`` (the sprite sheets of a Snapshot) of the
  same shape. Listed for every kind that has it, whatever the job's State.
- ``Output``: Bucket, Region, ``Object`` (the main output; skipped when it is a template
  such as ``snapshot-${Number}.jpg``), ``AuObject`` (VoiceSeparate's voice track beside the
  background in ``Object``), ``BassObject``/``DrumObject`` and ``StreamExtract[]`` (one
  ``{Index, Object}`` per extracted stream).
- ``PicProcessResult``: ``ObjectName`` (job callback) or
  ``UploadResult.ProcessResults.Object[].Key`` (the API's shape).
- ``SpeechRecognitionResult``: ``ObjectName`` and ``DetailObjectName``, result files
  written to the Output bucket.

Outputs other than MediaResult's are only reported for a job in State Success.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeGuard

from pipeline.parsing.fields import maps, opt_map, opt_str, strs
from pipeline.parsing.load import Node, join
from pipeline.parsing.values import OutputObject, SubFailure

FAILED: Final = "Failed"
# A DigitalWatermark node's Message is the text embedded, not an error message.
_MESSAGE_IS_CONFIG: Final = frozenset({"DigitalWatermark", "ExtractDigitalWatermark"})
_SECONDARY_OUTPUT_KEYS: Final = ("AuObject", "BassObject", "DrumObject")


def outputs(op: Node, state: str, path: str) -> tuple[OutputObject, ...]:
    """Every output object of the job, in Tencent's order, each key once."""
    found = _media_result(op, path)
    if state == "Success":
        found += _output_node(op, path, with_main=not found)
        found += _pic_process(op, path)
        found += _speech_recognition(op, path)
    return tuple(_unique(found))


def sub_failures(op: Node, path: str) -> tuple[SubFailure, ...]:
    """Direct children of Operation whose own ``State`` is Failed."""
    failures: list[SubFailure] = []
    for name in op:
        for i, node in enumerate(_objects(op, name)):
            npath = join(path, name) if len(_objects(op, name)) == 1 else f"{path}.{name}[{i}]"
            if opt_str(node, "State", npath) != FAILED:
                continue
            message = opt_str(node, "ErrMsg", npath) or opt_str(node, "ErrorMessage", npath)
            if name not in _MESSAGE_IS_CONFIG:
                message = message or opt_str(node, "Message", npath)
            code = opt_str(node, "Code", npath) or opt_str(node, "ErrCode", npath)
            failures.append(SubFailure(name=name, code=code, message=message))
    return tuple(failures)


def key(name: str, prefix: str | None = None) -> str:
    """The COS key of ``name``: no leading ``/``, joined to ``prefix`` when relative to it.

    ObjectPrefix is a plain key prefix (``output/snapshot-`` + ``0.jpg``), not a folder.
    """
    name = name.lstrip("/")
    pre = (prefix or "").lstrip("/")
    return name if not pre or name.startswith(pre) else pre + name


def _objects(node: Node, name: str) -> list[Node]:
    value = node.get(name)
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _media_result(op: Node, path: str) -> list[OutputObject]:
    found: list[OutputObject] = []
    result = opt_map(op, "MediaResult", path)
    if result is None:
        return found
    rpath = join(path, "MediaResult")
    for i, file in enumerate(maps(result, "OutputFile", rpath)):
        fpath = f"{rpath}.OutputFile[{i}]"
        found += _output_file(file, fpath)
        for j, sprite in enumerate(maps(file, "SpriteOutputFile", fpath)):
            found += _output_file(sprite, f"{fpath}.SpriteOutputFile[{j}]")
    return found


def _output_file(file: Node, path: str) -> list[OutputObject]:
    bucket = opt_str(file, "Bucket", path)
    region = opt_str(file, "Region", path)
    prefix = opt_str(file, "ObjectPrefix", path)
    md5s: dict[str, str] = {}
    for i, info in enumerate(maps(file, "Md5Info", path)):
        ipath = f"{path}.Md5Info[{i}]"
        md5 = opt_str(info, "Md5", ipath)
        if md5 is not None:
            md5s.update({key(name, prefix): md5 for name in strs(info, "ObjectName", ipath)})
    keys = [key(name, prefix) for name in strs(file, "ObjectName", path)]
    return [OutputObject(bucket, region, k, md5s.get(k)) for k in keys]


def _output_node(op: Node, path: str, *, with_main: bool) -> list[OutputObject]:
    out = opt_map(op, "Output", path)
    if out is None:
        return []
    opath = join(path, "Output")
    bucket = opt_str(out, "Bucket", opath)
    region = opt_str(out, "Region", opath)
    names = [opt_str(out, "Object", opath)] if with_main else []
    names += [opt_str(out, name, opath) for name in _SECONDARY_OUTPUT_KEYS]
    for i, stream in enumerate(maps(out, "StreamExtract", opath)):
        names.append(opt_str(stream, "Object", f"{opath}.StreamExtract[{i}]"))
    return [OutputObject(bucket, region, key(n), None) for n in names if _concrete(n)]


def _pic_process(op: Node, path: str) -> list[OutputObject]:
    result = opt_map(op, "PicProcessResult", path)
    if result is None:
        return []
    ppath = join(path, "PicProcessResult")
    names = strs(result, "ObjectName", ppath)
    upload = opt_map(result, "UploadResult", ppath)
    if upload is not None:
        upath = join(ppath, "UploadResult")
        processed = opt_map(upload, "ProcessResults", upath)
        if processed is not None:
            rpath = join(upath, "ProcessResults")
            for i, obj in enumerate(maps(processed, "Object", rpath)):
                names.append(opt_str(obj, "Key", f"{rpath}.Object[{i}]") or "")
    return _in_output_bucket(op, path, names)


def _speech_recognition(op: Node, path: str) -> list[OutputObject]:
    result = opt_map(op, "SpeechRecognitionResult", path)
    if result is None:
        return []
    spath = join(path, "SpeechRecognitionResult")
    names = strs(result, "ObjectName", spath) + strs(result, "DetailObjectName", spath)
    return _in_output_bucket(op, path, names)


def _in_output_bucket(op: Node, path: str, names: Iterable[str | None]) -> list[OutputObject]:
    out = opt_map(op, "Output", path) or {}
    opath = join(path, "Output")
    bucket = opt_str(out, "Bucket", opath)
    region = opt_str(out, "Region", opath)
    return [OutputObject(bucket, region, key(n), None) for n in names if _concrete(n)]


def _concrete(name: str | None) -> TypeGuard[str]:
    """A real key, not a template such as ``output/snapshot-${Number}.jpg``."""
    return name is not None and "${" not in name and bool(name.strip("/"))


def _unique(found: list[OutputObject]) -> list[OutputObject]:
    """Each key once: the first report wins (MediaResult's, which carries the MD5)."""
    seen: dict[tuple[str | None, str], OutputObject] = {}
    for output in found:
        seen.setdefault((output.bucket, output.key), output)
    return list(seen.values())
