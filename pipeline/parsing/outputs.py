"""What a job wrote to COS and what failed inside it, read from its Operation node.

Every node here may come as one object or a list of them. Where Tencent reports outputs:

- ``MediaResult.OutputFile[]``: Bucket, Region, ``ObjectPrefix`` and one or many
  ``ObjectName`` (Snapshot, SmartCover and Segment give several), ``Md5Info`` (one or many
  ``{Md5, ObjectName}``), and ``SpriteOutputFile`` (the sprite sheets of a Snapshot) of the
  same shape. Listed for every kind that has it, whatever the job's State.
- The other result nodes (``<Tag>Result``), written to the bucket of ``Output``:
  ``ObjectName`` and ``DetailObjectName`` (PicProcess, SpeechRecognition...),
  ``UploadResult.ProcessResults.Object[].Key`` (PicProcess, the API's shape) and
  ``PageInfo[].TgtUri`` (DocProcess, one per page).
- ``Output``, the job's request: Bucket, Region, ``Object`` (skipped when it is a template
  such as ``snapshot-${Number}.jpg``), ``AuObject`` (VoiceSeparate's voice track),
  ``BassObject``/``DrumObject`` and ``StreamExtract[]`` (``{Index, Output}`` per stream).
  Read only when no result node names an object: a result says what CI wrote, a request
  only what it was asked to write (a StreamExtract may ask for a stream the input lacks).

Outputs other than MediaResult's are only reported for a job in State Success.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeGuard

from pipeline.parsing.fields import maps, one_map, opt_str, strs
from pipeline.parsing.load import Node, join
from pipeline.parsing.values import OutputObject, SubFailure

FAILED: Final = "Failed"
RESULT_SUFFIX: Final = "Result"
MEDIA_RESULT: Final = "MediaResult"
# Result nodes whose shape is known; another ``<Tag>Result`` is read leniently, since a new
# kind of job must never make a callback unreadable.
_KNOWN_RESULTS: Final = frozenset(
    {"PicProcessResult", "SpeechRecognitionResult", "DocProcessResult"}
)
_NAME_KEYS: Final = ("ObjectName", "DetailObjectName")
# A DigitalWatermark node's Message is the text embedded, not an error message.
_MESSAGE_IS_CONFIG: Final = frozenset({"DigitalWatermark", "ExtractDigitalWatermark"})
_REQUESTED_KEYS: Final = ("Object", "AuObject", "BassObject", "DrumObject")


def outputs(op: Node, state: str, path: str) -> tuple[OutputObject, ...]:
    """Every output object of the job, in Tencent's order, each key once."""
    found = _media_result(op, path)
    if state == "Success":
        found += _result_nodes(op, path)
        if not found:
            found += _output_node(op, path)
    return tuple(_unique(found))


def result_tag(op: Node) -> str | None:
    """The Tag a result node names (``PicProcessResult`` → ``PicProcess``), if any:
    what a job without a Tag is taken to be."""
    for name in op:
        if name.endswith(RESULT_SUFFIX) and name != MEDIA_RESULT and name != RESULT_SUFFIX:
            return name.removesuffix(RESULT_SUFFIX)
    return None


def sub_failures(op: Node, path: str) -> tuple[SubFailure, ...]:
    """Direct children of Operation whose own ``State`` is Failed."""
    failures: list[SubFailure] = []
    for name in op:
        nodes = _objects(op, name)
        for i, node in enumerate(nodes):
            npath = join(path, name) if len(nodes) == 1 else f"{path}.{name}[{i}]"
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
    for i, result in enumerate(maps(op, MEDIA_RESULT, path)):
        rpath = _at(path, MEDIA_RESULT, i)
        for j, file in enumerate(maps(result, "OutputFile", rpath)):
            fpath = f"{rpath}.OutputFile[{j}]"
            found += _output_file(file, fpath)
            for k, sprite in enumerate(maps(file, "SpriteOutputFile", fpath)):
                found += _output_file(sprite, f"{fpath}.SpriteOutputFile[{k}]")
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


def _result_nodes(op: Node, path: str) -> list[OutputObject]:
    names: list[str | None] = []
    for name in op:
        if not name.endswith(RESULT_SUFFIX) or name == MEDIA_RESULT:
            continue
        if name in _KNOWN_RESULTS:
            for i, result in enumerate(maps(op, name, path)):
                names += _known_result_names(result, _at(path, name, i))
        else:
            for result in _objects(op, name):
                names += _lenient_names(result)
    return _in_output_bucket(op, path, names)


def _known_result_names(result: Node, path: str) -> list[str | None]:
    names: list[str | None] = []
    for name_key in _NAME_KEYS:
        names += strs(result, name_key, path)
    for i, upload in enumerate(maps(result, "UploadResult", path)):
        upath = _at(path, "UploadResult", i)
        for j, processed in enumerate(maps(upload, "ProcessResults", upath)):
            rpath = _at(upath, "ProcessResults", j)
            for k, obj in enumerate(maps(processed, "Object", rpath)):
                names.append(opt_str(obj, "Key", f"{rpath}.Object[{k}]"))
    for i, page in enumerate(maps(result, "PageInfo", path)):
        names.append(opt_str(page, "TgtUri", f"{path}.PageInfo[{i}]"))
    return names


def _lenient_names(result: Node) -> list[str | None]:
    """The object names of a result node cicb knows no shape for: strings only, the rest
    ignored rather than refused."""
    names: list[str | None] = []
    for name_key in _NAME_KEYS:
        value = result.get(name_key)
        values = value if isinstance(value, list) else [value]
        names += [v for v in values if isinstance(v, str)]
    return names


def _output_node(op: Node, path: str) -> list[OutputObject]:
    found: list[OutputObject] = []
    for i, out in enumerate(maps(op, "Output", path)):
        opath = _at(path, "Output", i)
        bucket = opt_str(out, "Bucket", opath)
        region = opt_str(out, "Region", opath)
        names = [opt_str(out, name, opath) for name in _REQUESTED_KEYS]
        for j, stream in enumerate(maps(out, "StreamExtract", opath)):
            spath = f"{opath}.StreamExtract[{j}]"
            # Tencent's field is Output; Object is what cicb read before it knew that.
            names.append(opt_str(stream, "Output", spath) or opt_str(stream, "Object", spath))
        found += [OutputObject(bucket, region, key(n), None) for n in names if _concrete(n)]
    return found


def _in_output_bucket(op: Node, path: str, names: Iterable[str | None]) -> list[OutputObject]:
    out = one_map(op, "Output", path) or {}
    opath = join(path, "Output")
    bucket = opt_str(out, "Bucket", opath)
    region = opt_str(out, "Region", opath)
    return [OutputObject(bucket, region, key(n), None) for n in names if _concrete(n)]


def _at(path: str, name: str, index: int) -> str:
    """The path of the index-th node called ``name``; a lone node is named without index."""
    return join(path, name) if index == 0 else f"{join(path, name)}[{index}]"


def _concrete(name: str | None) -> TypeGuard[str]:
    """A real key, not a template such as ``output/snapshot-${Number}.jpg``."""
    return name is not None and "${" not in name and bool(name.strip("/"))


def _unique(found: list[OutputObject]) -> list[OutputObject]:
    """Each key once: the first report wins (MediaResult's, which carries the MD5)."""
    seen: dict[tuple[str | None, str], OutputObject] = {}
    for output in found:
        seen.setdefault((output.bucket, output.key), output)
    return list(seen.values())
