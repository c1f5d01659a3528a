"""Small readers of lxml elements, shared by the descriptor's readers.

Namespaces are classified into roles (:mod:`.names`), so that each
dialect of OVF reads alike; text never includes entity references (they
are never expanded); values quoted in messages are cut short.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from lxml import etree

from ..errors import DescriptorError
from .names import ns_role

_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def _qn(el: etree._Element) -> tuple[str, str]:
    """(role, local name) of an element."""
    tag = el.tag
    if not isinstance(tag, str):
        return ("", "")
    return _split_tag(tag)


@functools.lru_cache(maxsize=4096)
def _split_tag(tag: str) -> tuple[str, str]:
    """Cached: a descriptor has a few dozen distinct tags and every walk
    asks for each element's role; classifying a namespace URI takes regexes."""
    if tag[:1] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns_role(ns), local
    return ns_role(None), tag


def _kind(el: etree._Element) -> str:
    """Local name, with 0.9's ``<Section xsi:type="ovf:DiskSection_Type">``
    and ``<Content xsi:type=...>`` resolved to what they are."""
    role, local = _qn(el)
    if local in ("Section", "Content") and role == "ovf":
        t = el.get(f"{{{_XSI}}}type")
        if t:
            t = t.split(":")[-1]
            return t[:-5] if t.endswith("_Type") else t
    return local


def _children(el: etree._Element, local: str, role: str = "ovf") -> Iterator[etree._Element]:
    for c in el:
        if isinstance(c.tag, str) and _kind(c) == local and _qn(c)[0] == role:
            yield c


def _child(el: etree._Element, local: str, role: str = "ovf") -> etree._Element | None:
    return next(_children(el, local, role), None)


def _text(el: etree._Element | None) -> str | None:
    """The element's text, entity references left out (never expanded)."""
    if el is None:
        return None
    parts: list[str] = []
    _collect_text(el, parts)
    t = "".join(parts).strip()
    return t or None


def _collect_text(el: etree._Element, parts: list[str]) -> None:
    if el.text:
        parts.append(el.text)
    for c in el:
        if isinstance(c.tag, str):  # not an entity reference
            _collect_text(c, parts)
        if c.tail:
            parts.append(c.tail)


def _shown(value: str) -> str:
    """A value in repr for a message, cut short so one line stays short."""
    if len(value) <= 80:
        return repr(value)
    return f"{value[:80]!r}... ({len(value)} characters)"


def _attr(el: etree._Element, local: str) -> str | None:
    """An attribute by local name, in the OVF namespace or unqualified
    (some producers drop the prefix; VMware 0.9 uses its own namespace)."""
    for k, v in el.attrib.items():
        q = etree.QName(k)
        if q.localname == local and (q.namespace is None or ns_role(q.namespace) == "ovf"):
            return v
    return None


def _vendor_attr(el: etree._Element, local: str, role: str) -> str | None:
    for k, v in el.attrib.items():
        q = etree.QName(k)
        if q.localname == local and q.namespace and ns_role(q.namespace) == role:
            return v
    return None


_WHOLE = re.compile(r"\s*([-+]?)([0-9]{1,100})\s*")


def _int(value: str | None, what: str, path: str | None) -> int | None:
    """A whole number >= 0; None if absent; DescriptorError otherwise."""
    if value is None or value.strip() == "":
        return None
    m = _WHOLE.fullmatch(value)
    if m is None:
        raise DescriptorError(f"{what} {_shown(value)} is not a whole number", path)
    if m.group(1) == "-" and int(m.group(2)) != 0:
        raise DescriptorError(f"{what} {_shown(value)} is negative", path)
    return int(m.group(2))


def _number(value: str) -> int | None:
    """A whole number, maybe negative; None if ``value`` is not one."""
    m = _WHOLE.fullmatch(value)
    if m is None:
        return None
    return -int(m.group(2)) if m.group(1) == "-" else int(m.group(2))


def _rasd(item: etree._Element, local: str) -> str | None:
    """A RASD-like field of an Item/StorageItem/EthernetPortItem by local name."""
    for c in item:
        if isinstance(c.tag, str) and _qn(c)[1] == local and _qn(c)[0] in (
                "rasd", "sasd", "epasd", "ovf", "other"):
            return _text(c)
    return None
