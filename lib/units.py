"""DSP0004 programmatic units: how many bytes one unit of an OVF size is.

OVF gives sizes as a number plus a unit string: ``ovf:capacity="16"`` with
``ovf:capacityAllocationUnits="byte * 2^30"``, or ``rasd:VirtualQuantity``
with ``rasd:AllocationUnits`` (``VirtualQuantityUnits`` in newer schemas).
DSP0243 takes these strings from DSP0004 (CIM infrastructure, annex C),
whose "programmatic units" are a small expression language, roughly::

    programmatic-unit = [ "-" ] unit-element *( unit-operator unit-element )
    unit-element      = number / [ unit-prefix ] base-unit [ "^" exponent ]
    unit-operator     = "*" / "/"
    number            = floating-point-number / integer [ "^" exponent ]
    exponent          = [ "-" ] integer

so ``byte * 2^20``, ``byte*1024*1024``, ``byte * 10^3`` and ``kilobyte``
all name multiples of a byte.

Why a grammar and not a table: a table of known strings (Ganeti's old
``ALLOCATION_UNITS``, VirtualBox's string compares) only knows the spellings
someone listed, so ``byte * 2 ^ 20`` (VMware) or ``byte*1024*1024``
(govmomi) fall through it, and a table cannot say *why* it refuses.  The
grammar reads every spacing and product the spec allows, and its refusals
are precise: unknown unit, negative exponent, not a byte unit, and so on.
Only the unit *words* are a table (``_BYTE_WORDS``).

Beyond DSP0004 we accept what producers write: any letter case, the plural
``bytes``, and vendor words such as ``MegaBytes``, ``MB``, ``KiB``.  Decimal
prefixes on bytes mean powers of 1024 (see :func:`parse_byte_units`).

Everything here is pure: errors are :class:`UnitsError` with one line
naming the problem and quoting the value; callers pass ``path``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from fractions import Fraction

import pyparsing as pp

from .errors import UnitsError

__all__ = [
    "MAX_EXPANDED_CHARS",
    "MAX_MULTIPLIER",
    "MAX_REFERENCES",
    "MAX_UNIT_CHARS",
    "format_byte_units",
    "parse_byte_units",
    "resolve_properties",
    "to_bytes",
]

#: The largest multiplier we read or write (2^128 bytes; a yobibyte is 2^80).
#: Anything bigger in a descriptor is an error, not a disk.
MAX_MULTIPLIER = 2**128

# Bounds that keep hostile input cheap: no 10^999999999, no 5000-digit
# literals (int() refuses those anyway), no running product past 2^1024.
_MAX_EXPONENT = 1024
_MAX_DIGITS = 310
_MAX_INTERMEDIATE = 2**1024
_MAX_QUANTITY_DIGITS = 100
_MAX_SHOWN = 80  # characters of a hostile value worth quoting in a message
# Real unit strings are short ("byte * 2^30", "MegaBytes"); a longer one is
# refused before pyparsing sees it, whose time and memory grow with it.
MAX_UNIT_CHARS = 256
# A ${property} expansion never builds more than this, nor follows more
# references: capacities and counts are a few digits.
MAX_EXPANDED_CHARS = 64 * 1024
MAX_REFERENCES = 1024

_Path = str | os.PathLike[str] | None  # the file a value came from, for messages

# --- the vocabulary --------------------------------------------------------

_DECIMAL = ("kilo", "mega", "giga", "tera", "peta", "exa", "zetta", "yotta")
_BINARY = ("kibi", "mebi", "gibi", "tebi", "pebi", "exbi", "zebi", "yobi")
_SYMBOLS = ("k", "m", "g", "t", "p", "e", "z", "y")


def _byte_words() -> dict[str, int]:
    """Every byte word we know (casefolded) -> its multiplier."""
    words = {"byte": 1, "bytes": 1, "b": 1}
    for power, (dec, bin_, sym) in enumerate(zip(_DECIMAL, _BINARY, _SYMBOLS, strict=True), 1):
        mult = 1024**power
        for word in (dec + "byte", bin_ + "byte"):
            words[word] = words[word + "s"] = mult
        words[sym + "b"] = words[sym + "ib"] = mult  # KB, KiB, ...
    return words


_BYTE_WORDS = _byte_words()

# DSP0004's other base units, only so that "hertz * 10^6" is reported as
# "not bytes" rather than "unknown".  Prefixed and plural forms count too.
_OTHER_UNITS = frozenset({
    "percent", "count", "revolution", "degree", "radian", "steradian", "bit",
    "dataword", "msu", "meter", "inch", "rack unit", "foot", "yard", "mile",
    "liter", "fluid ounce", "liquid gallon", "mole", "gram", "kilogram", "ounce",
    "pound", "second", "minute", "hour", "day", "week", "gravity", "kelvin",
    "degree celsius", "degree fahrenheit", "candela", "lumen", "nit", "lux",
    "newton", "pascal", "bar", "decibel", "ampere", "volt", "watt", "ohm",
    "joule", "coulomb", "farad", "henry", "siemens", "weber", "tesla", "hertz",
    "becquerel", "gray", "sievert", "british thermal unit", "cycle",
    "hz", "khz", "mhz", "ghz", "thz",
})
_SUBMULTIPLES = ("deca", "hecto", "deci", "centi", "milli", "micro", "nano",
                 "pico", "femto", "atto", "zepto", "yocto")


def _normal(word: str) -> str:
    return " ".join(word.split()).casefold()


def _is_other_unit(word: str) -> bool:
    """True for a DSP0004 unit that is not a byte (``hertz``, ``megahertz``)."""
    forms = {word, word[:-1]} if word.endswith("s") else {word}
    for form in forms:
        if form in _OTHER_UNITS:
            return True
        for prefix in _DECIMAL + _BINARY + _SUBMULTIPLES:
            if form.startswith(prefix) and form[len(prefix):] in _OTHER_UNITS:
                return True
    return False


# --- the grammar -----------------------------------------------------------
# Only pyparsing APIs present in 3.0.9 (Debian 12) are used.

_NUMBER = pp.Regex(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+").set_name("number")
_WORD = pp.Regex(r"[^\W\d]\w*(?:[ \t]+[^\W\d]\w*)*").set_name("unit")
# Signs and fractions are accepted here so they can be refused by name.
_EXPONENT = pp.Regex(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)").set_name("exponent")
_ELEMENT = pp.Group(
    (_NUMBER("number") | _WORD("unit"))
    + pp.Optional(pp.Suppress("^") + _EXPONENT("exponent"))
)
_OPERATOR = pp.one_of("* /")
_PROGRAMMATIC_UNIT = (
    pp.Optional(pp.Literal("-")("sign"))
    + _ELEMENT
    + pp.ZeroOrMore(_OPERATOR + _ELEMENT)
)


def _shown(text: str) -> str:
    """``text`` in repr for a message, cut short so one line stays short."""
    if len(text) <= _MAX_SHOWN:
        return repr(text)
    return f"{text[:_MAX_SHOWN]!r}... ({len(text)} characters)"


class _Refused(Exception):
    """Internal: the problem text, before the value and path are attached."""


def _exponent(text: str | None) -> int:
    if text is None:
        return 1
    if text.startswith("-"):
        raise _Refused("negative exponent in")
    if "." in text:
        raise _Refused("fractional exponent in")
    if len(text) > 8 or int(text) > _MAX_EXPONENT:
        raise _Refused("oversized")
    return int(text)


def _power(base: Fraction, exponent: int) -> Fraction:
    size = max(base.numerator, base.denominator).bit_length() - 1
    if size * exponent > _MAX_INTERMEDIATE.bit_length():
        raise _Refused("oversized")
    return base**exponent


@functools.lru_cache(maxsize=256)
def _multiplier(text: str) -> int:
    """The byte multiplier of ``text``, or :class:`_Refused`."""
    if not text.strip():
        raise _Refused("empty")
    try:
        tokens = _PROGRAMMATIC_UNIT.parse_string(text, parse_all=True)
    except pp.ParseBaseException:
        raise _Refused("malformed") from None
    if tokens.get("sign"):
        raise _Refused("negative")
    items = list(tokens)  # element, operator, element, ...
    operators = ["*"] + items[1::2]

    factor = Fraction(1)
    byte_units: list[tuple[str, int, int]] = []  # (operator, multiplier, exp)
    not_bytes = False
    for operator, element in zip(operators, items[0::2], strict=False):
        exponent = _exponent(element.get("exponent"))
        if "unit" in element:
            word = _normal(element["unit"])
            if word in _BYTE_WORDS:
                byte_units.append((operator, _BYTE_WORDS[word], exponent))
            elif _is_other_unit(word):
                not_bytes = True
            else:
                raise _Refused("unknown")
            continue
        if len(element["number"]) > _MAX_DIGITS:
            raise _Refused("oversized")
        value = _power(Fraction(element["number"]), exponent)
        if value == 0:
            raise _Refused("zero factor in")
        factor = factor * value if operator == "*" else factor / value
        if max(factor.numerator, factor.denominator) > _MAX_INTERMEDIATE:
            raise _Refused("oversized")

    # Bytes to the first power, once, multiplied: not byte^2, byte/s, 1/byte.
    if not_bytes or [(op, exp) for op, _, exp in byte_units] != [("*", 1)]:
        raise _Refused("non-byte")
    multiplier = factor * byte_units[0][1]
    if multiplier.denominator != 1:
        raise _Refused("fractional multiplier in")
    if multiplier > MAX_MULTIPLIER:
        raise _Refused("oversized")
    return int(multiplier)


# --- the API ---------------------------------------------------------------


def parse_byte_units(text: str, *, path: _Path = None) -> int:
    """How many bytes one ``text`` unit is: ``"byte * 2^20"`` -> 1048576.

    ``text`` is a DSP0004 programmatic unit over ``byte`` (spaces free,
    factors multiplied or divided, non-negative integer exponents) or a
    vendor word.  Letter case does not matter.

    Decimal prefixes on bytes mean powers of 1024: ``KB``, ``MB``,
    ``MegaBytes``, ``megabyte``, ``GB`` ... are 2^10, 2^20, 2^30 ..., the
    same as ``KiB``, ``MiB``, ``mebibyte``.  DSP0004 defines ``mega`` as
    10^6, but in OVF practice these words are binary: the DSP0243 LAMP
    example, VirtualBox, oVirt and virt-v2v write memory as ``MegaBytes``
    meaning MiB, VirtualBox reads ``MegaBytes``/``MB`` as 2^20 and
    ``GigaBytes``/``GB`` as 2^30, and Ganeti's own ovfconverter lists
    ``megabytes``/``mb`` beside ``byte * 2^20``.  Who means decimal writes
    ``byte * 10^6``, which is read exactly.

    Raises :class:`UnitsError` (``value=text``) for anything else: not bytes
    (``hertz * 10^6``, ``count``), unknown words, negative or fractional
    exponents, a multiplier that is not a whole number, above
    :data:`MAX_MULTIPLIER`, text longer than :data:`MAX_UNIT_CHARS`, or
    malformed text.
    """
    try:
        if len(text) > MAX_UNIT_CHARS:  # before the parser and the cache
            raise _Refused("oversized")
        return _multiplier(text)
    except _Refused as refusal:
        problem = f"{refusal} allocation unit {_shown(text)}"
        raise UnitsError(problem, path, value=text) from None


def format_byte_units(multiplier: int) -> str:
    """The unit string for writing ``multiplier`` bytes: 2**20 -> ``"byte * 2^20"``.

    1 is ``"byte"``, powers of two ``"byte * 2^N"``, powers of ten
    ``"byte * 10^N"``, anything else ``"byte * N"``; each reads back
    through :func:`parse_byte_units`.  A multiplier that is not an int in
    ``1..MAX_MULTIPLIER`` is a bug in the caller: ``TypeError`` or
    ``ValueError``, not :class:`UnitsError`.
    """
    if isinstance(multiplier, bool) or not isinstance(multiplier, int):
        raise TypeError(f"multiplier must be an int, got {multiplier!r}")
    if not 1 <= multiplier <= MAX_MULTIPLIER:
        raise ValueError(f"multiplier must be in 1..2**128, got {multiplier!r}")
    if multiplier == 1:
        return "byte"
    if multiplier & (multiplier - 1) == 0:
        return f"byte * 2^{multiplier.bit_length() - 1}"
    digits = str(multiplier)
    if digits.rstrip("0") == "1":
        return f"byte * 10^{len(digits) - 1}"
    return f"byte * {digits}"


_QUANTITY = re.compile(r"\s*\+?([0-9]+)\s*")
_NEGATIVE = re.compile(r"\s*-\s*[0-9]+\s*")


def to_bytes(
    quantity: str | int,
    units: str | None,
    *,
    default_units: str = "byte",
    path: _Path = None,
) -> int:
    """``quantity`` times the multiplier of ``units`` (``default_units`` if None).

    ``quantity`` is an int or a decimal integer string (surrounding
    whitespace allowed, ASCII digits only).  Negative or non-numeric
    quantities, and bad units, raise :class:`UnitsError`.
    """
    if isinstance(quantity, int) and not isinstance(quantity, bool):
        if quantity < 0:
            problem = f"negative quantity {quantity!r}"
            raise UnitsError(problem, path, value=str(quantity))
        number = quantity
    else:
        text = str(quantity)
        match = _QUANTITY.fullmatch(text)
        if match is None:
            problem = "negative" if _NEGATIVE.fullmatch(text) else "non-numeric"
            raise UnitsError(f"{problem} quantity {_shown(text)}", path, value=text)
        if len(match.group(1)) > _MAX_QUANTITY_DIGITS:
            raise UnitsError(f"oversized quantity {_shown(text)}", path, value=text)
        number = int(match.group(1))
    units = default_units if units is None else units
    return number * parse_byte_units(units, path=path)


_REFERENCE = re.compile(r"\$\{(?P<name>[^{}]*)\}|\$\{")


def resolve_properties(
    text: str,
    properties: Mapping[str, str | None],
    *,
    path: _Path = None,
) -> str:
    """``text`` with each OVF ``${name}`` replaced by that property's value.

    Used for values such as ``ovf:capacity="${disk_size}"``; ``properties``
    maps property names (``class.key.instance`` when qualified) to their
    ProductSection defaults.  Replacement is one pass: a value containing
    ``${`` is not expanded again.  Text without ``${`` comes back as is.
    An unknown property, one without a value, an unclosed or empty
    reference, more than :data:`MAX_REFERENCES` references or a result
    longer than :data:`MAX_EXPANDED_CHARS` (known from the lengths before
    it is built) raises :class:`UnitsError`.
    """
    if "${" not in text:
        return text
    if text.count("${") > MAX_REFERENCES:
        problem = f"more than {MAX_REFERENCES} property references"
        raise UnitsError(problem, path, value=text)
    values: list[str] = []
    size = 0
    for match in _REFERENCE.finditer(text):
        value = _property_value(match, text, properties, path)
        size += len(value) - len(match.group(0))
        values.append(value)
    if len(text) + size > MAX_EXPANDED_CHARS:  # known before anything is built
        problem = (f"property references expand to {len(text) + size} characters "
                   f"(at most {MAX_EXPANDED_CHARS})")
        raise UnitsError(problem, path, value=text)
    chosen = iter(values)
    return _REFERENCE.sub(lambda _match: next(chosen), text)


def _property_value(match: re.Match[str], text: str,
                    properties: Mapping[str, str | None], path: _Path) -> str:
    """The value one ``${name}`` reference stands for, or :class:`UnitsError`."""
    name = match.group("name")
    if name is None:
        problem = f"unterminated property reference in {_shown(text)}"
    elif not name:
        problem = f"empty property reference in {_shown(text)}"
    elif name not in properties:
        problem = f"unknown property {_shown(name)}"
    else:
        value = properties[name]
        if value is not None:
            return value
        problem = f"property {_shown(name)} has no value"
    raise UnitsError(problem, path, value=text)
