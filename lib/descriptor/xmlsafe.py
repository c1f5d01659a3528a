"""Bytes -> lxml tree, refusing what makes XML dangerous.

The parser never loads a DTD, never expands entities, never touches the
network; a DOCTYPE that declares entities is refused outright (as
defusedxml does), and so are descriptors with more markup or nesting than
any real one, before the tree is built where that can be told.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import DescriptorError

__all__ = ["MAX_ATTRIBUTES", "MAX_DEPTH", "MAX_MARKUP", "parse_xml"]

MAX_DEPTH = 64

#: The most markup (``<`` characters: tags, comments, declarations) a
#: descriptor may hold.  The largest real one we know (the shared corpus,
#: 520+ descriptors: VMware's vCSA 6.5) has 6438; libxml2 needs ~360 bytes
#: per element and the reader ~8 us, so 200k keeps any descriptor under
#: ~2 s and ~100 MiB, where 64 MiB of empty elements would take minutes
#: and gigabytes.  Counted in the bytes before any parsing.
MAX_MARKUP = 200_000

#: The most attributes (namespace declarations included) one start tag may
#: have.  The corpus's most is 15 (XenCenter); libxml2's duplicate check is
#: quadratic in them (100000 on one element: 50 s).  Counted in the bytes.
MAX_ATTRIBUTES = 256


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes, *, path: str | None = None) -> etree._Element:
    """The root element, or DescriptorError with lxml's first complaint.

    A file that declares UTF-16 but is really 8-bit (XenCenter does this)
    is read again as UTF-8: that is what the producing tool meant.
    """
    _check_markup(data, path)
    _check_attributes(data, path)
    _refuse_entity_declarations(data, path)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        retry = _undeclare_utf16(data)
        if retry is None:
            raise _syntax_error(e, path) from e
        try:
            root = etree.fromstring(retry, _parser())
        except etree.XMLSyntaxError:
            raise _syntax_error(e, path) from e
    except ValueError as e:  # e.g. unicode strings with declarations
        raise DescriptorError(f"not readable as XML: {e}", path) from e
    if root is None:
        raise DescriptorError("empty XML document", path)
    _check_declared_entities(root, path)
    _check_depth(root, path)
    return root


# A DOCTYPE, then an entity declaration after it, in the encodings real
# descriptors use (UTF-8 and its ASCII subsets, UTF-16 either way round).
_ENTITY_MARKS = tuple(("<!DOCTYPE".encode(enc), "<!ENTITY".encode(enc))
                      for enc in ("utf-8", "utf-16-le", "utf-16-be"))
_ENTITY_NAME = re.compile(rb"<!ENTITY\s+(%\s*)?([^\s\"'>]{1,80})")


def _entities_refused(name: str | None, path: str | None) -> DescriptorError:
    what = f" ({name})" if name else ""
    return DescriptorError(f"the DOCTYPE declares entities{what}; entity declarations are "
                           "refused (a package has no use for them)", path)


def _refuse_entity_declarations(data: bytes, path: str | None) -> None:
    """Refuse ``<!ENTITY`` (general or parameter) in a DOCTYPE before
    libxml2 sees it: a declaration is only ever a bomb, a probe for local
    files or a way to hide text, and even unexpanded it costs parse time.
    A plain DOCTYPE (no internal subset, or only element declarations)
    is harmless and passes."""
    for doctype, entity in _ENTITY_MARKS:
        start = data.find(doctype)
        if start < 0:
            continue
        at = data.find(entity, start)
        if at < 0:
            continue
        m = _ENTITY_NAME.match(data, at) if doctype == _ENTITY_MARKS[0][0] else None
        name = None
        if m:
            name = ("%" if m.group(1) else "&") + m.group(2).decode("utf-8", "replace")
            name += ";"
        raise _entities_refused(name, path)


def _check_declared_entities(root: etree._Element, path: str | None) -> None:
    """The same refusal after parsing, for any encoding the scan missed."""
    dtd = root.getroottree().docinfo.internalDTD
    first = next(iter(dtd.iterentities()), None) if dtd is not None else None
    if first is not None:
        raise _entities_refused(f"&{first.name};", path)


def _check_markup(data: bytes, path: str | None) -> None:
    """Refuse before building a tree whose size nothing else bounds: the
    byte cap allows 16M empty elements.  (In UTF-16 other characters may
    count too: an over-estimate, and no real descriptor is near the cap.)"""
    n = data.count(b"<")
    if n > MAX_MARKUP:
        raise DescriptorError(f"{n} tags; refusing a descriptor of more than "
                              f"{MAX_MARKUP} (real ones have a few thousand)", path)


# A start tag with more than MAX_ATTRIBUTES attributes: each alternative
# is told by its first byte, so a failed match costs its tag's length.
_CROWDED_TAG = re.compile(rb"<[^\s<>/!?]+(?:\s+[^\s=<>/]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))"
                          rb"{%d}" % (MAX_ATTRIBUTES + 1))


def _check_attributes(data: bytes, path: str | None) -> None:
    """Refuse a start tag with more attributes than any real descriptor,
    before libxml2 spends quadratic time checking them for duplicates.
    UTF-16 (libxml2 reads it too) is scanned as UTF-8."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[:4] in (b"<\x00?\x00", b"\x00<\x00?"):
        enc = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else (
            "utf-16-le" if data[0] == 0x3C else "utf-16-be")
        data = data.decode(enc, "replace").encode("utf-8", "replace")
    m = _CROWDED_TAG.search(data)
    if m:
        name = m.group(0)[1:].split(None, 1)[0][:80].decode("utf-8", "replace")
        raise DescriptorError(f"element <{name}> has more than {MAX_ATTRIBUTES} attributes; "
                              "refusing it (real descriptors have at most a few dozen)", path)


def _xml_msg(e: etree.XMLSyntaxError) -> str:
    msg = str(e.msg if getattr(e, "msg", None) else e)
    return msg.splitlines()[0] if msg else "syntax error"


def _syntax_error(e: etree.XMLSyntaxError, path: str | None) -> DescriptorError:
    """lxml's complaint as our one line; libxml2's own limits said plainly
    (its advice to 'use XML_PARSE_HUGE' is not for an operator)."""
    msg = _xml_msg(e)
    if "Excessive depth" in msg:
        return DescriptorError(f"XML nested deeper than {MAX_DEPTH} levels", path)
    # libxml2 >= 2.10 says "amplification"; 2.9 (Debian 12) "entity reference loop".
    if "amplification" in msg.lower() or "entity reference loop" in msg.lower():
        return DescriptorError("XML entity declarations would expand beyond the parser's "
                               "limit (an entity bomb); entities are never expanded", path)
    return DescriptorError(f"not well-formed XML: {msg}", path)


def _undeclare_utf16(data: bytes) -> bytes | None:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return None  # really UTF-16
    m = re.match(rb"\s*<\?xml[^>]*encoding=[\"']utf-16[\"'][^>]*\?>", data, re.I)
    if not m:
        return None
    return data[m.end():]


def _check_depth(root: etree._Element, path: str | None) -> None:
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DescriptorError(f"XML nested deeper than {MAX_DEPTH} levels", path)
        stack.extend((c, depth + 1) for c in el)
