"""From raw callback bytes to one normalized document, XML and JSON alike.

The format is decided by the body, never by the Content-Type. Both formats end in the same
shape, so the XML and the JSON form of one callback normalize to equal documents: empty
values are dropped, every scalar is a string, the nodes Tencent sends one-or-many
(``LIST_KEYS``) are always lists, and any other node that comes as a list of one is that
one value (XML cannot tell a list of one from a single element; JSON sometimes wraps one).

A body that is not well-formed is refused with a ParseError naming the line and column
(both counted from 1, in the body as sent) where the reader gave up.

Hostile bodies are refused before they cost much: a DTD (and with it every entity, internal
or external) is rejected, nesting deeper than ``MAX_DEPTH`` and more than ``MAX_NODES``
elements, objects or arrays are rejected, and the work done is linear in the body's size.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Final, Literal
from xml.parsers import expat

import xmltodict

from pipeline.errors import ParseError

Format = Literal["xml", "json"]
Node = dict[str, Any]

MAX_DEPTH: Final = 64
"""Deepest nesting of elements (XML) or objects and arrays (JSON) accepted."""
MAX_NODES: Final = 100_000
"""Most elements or attributes (XML), or objects, arrays or keys (JSON) in one body."""

# XML gives a list only when a node repeats, JSON sometimes gives an object for one item.
LIST_KEYS: Final = frozenset(
    {"CosHeaders", "ObjectName", "Md5Info", "Tasks", "WatermarkTemplateId", "JobsDetail"}
    | {"OutputFile", "SpriteOutputFile", "StreamExtract", "ObjectInfo", "SpriteObjectInfo"}
)
XML_ROOT: Final = "Response"
MIXED_TEXT_KEY: Final = "#text"  # where xmltodict puts text found beside child elements

_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_WHITESPACE: Final = b" \t\r\n"
_DECLARATION_RE: Final = re.compile(rb"<\?xml[^>]*?\?>", re.IGNORECASE)
_ENCODING_RE: Final = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_DTD_RE: Final = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def detect_format(body: bytes) -> Format:
    """``"xml"`` or ``"json"``, from the first character of the body (after a BOM and
    whitespace). Raises ParseError when the body is neither."""
    _, text = _unbom(bytes(body))
    start = text.lstrip(_WHITESPACE)[:1]
    if start == b"<":
        return "xml"
    if start in (b"{", b"["):
        return "json"
    if not start:
        raise ParseError("empty body")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    raise ParseError(f"body is neither XML nor JSON (starts with {text[:20]!r})")


def load(body: bytes, fmt: Format, *, xml_root: str = XML_ROOT) -> Node:
    """The normalized root mapping of ``body`` read as ``fmt``; raises ParseError.

    Every XML cicb reads comes through here (CI's error answers too, with
    ``xml_root="Error"``): no DTD, no entity, bounded depth and size.
    """
    encoding, raw = _unbom(bytes(body))
    if fmt == "xml":
        doc = _load_xml(raw, encoding, xml_root)
    else:
        doc = _load_json(_decode(raw, encoding or "utf-8"))
    root = normalize(doc)
    if not isinstance(root, dict):
        raise ParseError("callback document is empty")
    return root


def _unbom(body: bytes) -> tuple[str | None, bytes]:
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding, _transcode(body[len(bom) :], encoding)
    return None, body


def _transcode(body: bytes, encoding: str) -> bytes:
    """UTF-16 bodies become UTF-8 so every later step reads one encoding."""
    if encoding == "utf-8":
        return body
    return _decode(body, encoding).encode("utf-8")


def _decode(body: bytes, encoding: str) -> str:
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as exc:
        name = "UTF-8" if encoding == "utf-8" else encoding
        raise ParseError(f"body is not {name}: {exc.reason} at byte {exc.start}") from exc
    except LookupError as exc:  # a declared encoding that is no text encoding ("hex")
        raise ParseError(f"unknown encoding {encoding!r}") from exc


def _load_xml(raw: bytes, bom_encoding: str | None, xml_root: str) -> Any:
    encoding = bom_encoding or "utf-8"
    start = len(raw) - len(raw.lstrip(_WHITESPACE))
    declaration = _DECLARATION_RE.match(raw, start)
    if declaration is not None:
        declared = _ENCODING_RE.search(declaration.group(0))
        if declared is not None and bom_encoding is None:
            encoding = declared.group(1).decode("ascii")
        # Blanked, not cut, so expat's line and column are the body's own. The text is
        # decoded here, so the declared encoding must not reach expat.
        blank = re.sub(rb"[^\n]", b" ", declaration.group(0))
        raw = raw[: declaration.start()] + blank + raw[declaration.end() :]
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise ParseError(f"unknown XML encoding {encoding!r}") from exc
    # A BOM has already turned the body into UTF-8.
    text = _decode(raw, "utf-8" if bom_encoding else encoding)
    if _DTD_RE.search(text):
        raise ParseError("XML with a DOCTYPE or ENTITY declaration is refused")
    # Cheap upper bounds, counted before expat builds anything: tags and attributes.
    if text.count("<") > 2 * MAX_NODES or text.count("=") > MAX_NODES:
        raise ParseError(f"more than {MAX_NODES} XML elements or attributes")
    doc = _parse_xml(text)
    if not isinstance(doc, dict) or xml_root not in doc:
        root = next(iter(doc), "") if isinstance(doc, dict) else ""
        raise ParseError(f"XML root must be <{xml_root}>, got <{root}>", path=str(root))
    return doc[xml_root]


def _parse_xml(text: str) -> Any:
    """Elements to nested dicts with xmltodict: repeated children become lists, empty
    elements None, attributes are ignored, and any entity declaration is refused."""
    try:
        doc = xmltodict.parse(text, disable_entities=True, xml_attribs=False)
    except expat.ExpatError as exc:
        # expat counts columns from 0; people (and json) count them from 1.
        where = at(exc.lineno, exc.offset + 1)
        raise ParseError(f"invalid XML {where}: {expat.ErrorString(exc.code)}") from exc
    except ValueError as exc:  # xmltodict's answer to an entity declaration
        raise ParseError(f"XML refused: {exc}") from exc
    return doc


def _load_json(text: str) -> Any:
    # Cheap upper bounds, counted before json builds anything: containers, keys and items.
    if text.count("{") + text.count("[") > MAX_NODES or max(map(text.count, ":,")) > MAX_NODES:
        raise ParseError(f"more than {MAX_NODES} JSON objects, arrays, keys or items")
    try:
        doc = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except RecursionError as exc:
        raise ParseError(f"nested deeper than {MAX_DEPTH}") from exc
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON {at(exc.lineno, exc.colno)}: {exc.msg}") from exc
    except ValueError as exc:  # a number too long to convert, say
        raise ParseError(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ParseError(f"JSON callback must be an object, got {kind(doc)}")
    wrapped = doc.get(XML_ROOT)
    if "EventName" not in doc and isinstance(wrapped, dict):
        return wrapped
    return doc


def normalize(value: Any, path: str = "", depth: int = 0) -> Any:
    """Drop empty values, stringify scalars, make one-or-many nodes (``LIST_KEYS``) lists and
    any other list of one its one item; None if empty."""
    if depth > MAX_DEPTH:
        raise ParseError(f"nested deeper than {MAX_DEPTH}", path=path)
    if isinstance(value, dict):
        out: Node = {}
        for key, item in value.items():
            key = str(key)
            if key == MIXED_TEXT_KEY:  # text beside child elements is never callback data
                continue
            norm = normalize(item, join(path, key), depth + 1)
            if norm is None:
                continue
            if key in LIST_KEYS and not isinstance(norm, list):
                norm = [norm]
            elif key not in LIST_KEYS and isinstance(norm, list) and len(norm) == 1:
                norm = norm[0]
            out[key] = norm
        return out or None
    if isinstance(value, list):
        items = [normalize(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        kept = [n for n in items if n is not None]
        return kept or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        # XML text is stripped; strip JSON strings too so both agree.
        return value.strip() or None
    if value is None:
        return None
    raise ParseError(f"unexpected value of type {type(value).__name__}", path=path)


def at(line: int, column: int) -> str:
    """Where in the body a syntax error is, as every refusal of a malformed body says it."""
    return f"at line {line}, column {column}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__
