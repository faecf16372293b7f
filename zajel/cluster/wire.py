"""The codec of the messages nodes send each other: requests and replies as plain JSON.

Invariants:
- Nothing but data crosses: a value is encoded from a closed set of types (JSON's own, tuples,
  bytes, non-finite floats, integers beyond 64 bits, sets, ``ProtocolError``, and the attrs
  classes and enums of ``MODULES``), and decoding builds only those. There is no pickle and no
  import by name: a class name the registry does not hold is refused (``WireError``), so the
  registry is the schema (docs/cluster.md).
- A round trip gives back an equal value of exactly the same types: tuples stay tuples (frozen
  attrs values are hashed and compared), ``bytes`` stay ``bytes``, ``inf`` stays ``inf``, a
  ``bool`` never becomes an ``int``.
- Plain JSON stays plain: a dict with string keys is sent as itself, so a frame's payload costs
  one walk and no wrapping. A tagged value is an object whose *first* key starts with ``@``;
  the rare plain dict whose first key starts with ``@`` is wrapped (``{"@d": {...}}``), so the
  two can never be confused and the decoder reads one key to tell them apart.
- Values that hold live things (``Attach``'s peer, ``Envelope``'s reply channel) are refused
  with the reason, never sent half.

The tagged forms (first key, then the rest):

=========================  =============================================================
``{"@": name, f: v...}``   an instance of the registered attrs class ``name``, one key per
                           field given to ``__init__`` (fields with ``init=False`` are
                           derived: the constructor makes them again)
``{"@t": [...]}``          a tuple
``{"@d": {...}}``          a dict with string keys whose first key starts with ``@``
``{"@m": [[k, v]...]}``    a dict with a key that is not a string
``{"@b": "base64"}``       bytes
``{"@f": "inf"}``          ``inf``, ``-inf`` or ``nan``
``{"@i": "digits"}``       an integer outside orjson's 64 bits
``{"@s": [...]}``          a set (``"@fs"``: a frozenset)
``{"@e": name, "v": m}``   the member named ``m`` of the registered enum ``name``
``{"@x": [code, text]}``   a ``ProtocolError``
=========================  =============================================================

A class's wire name is its module path without ``zajel.`` and its qualified name
(``protocol.signaling.Relay``): unique by construction, and unchanged as long as the class
keeps its module and name. To send a new class, define it (public, attrs) in a module of
``MODULES``. Decoding builds it with its ``__init__``, by the fields' aliases (``_x`` is
``x``). Field values are not checked against their annotations: both ends run the same code,
and the checks of the protocol layer already ran where the value was made.

Speed: this runs on every message between nodes, so each class gets an encoder and a decoder
written out for its fields when the registry is built (as attrs writes ``__init__``), and
values sent as they are (strings, None, bools) are tested inline rather than through a call.
``bench/wire_codec.py`` measures it. Nesting costs one Python frame per level: a value nested
deeper than the recursion limit allows is refused with ``WireError``, as a node refuses to
encode it for a client (``zajel.protocol.frames.encode``).

The registry is built at import and imports every module of ``MODULES``: none of them may
import this one.
"""

from __future__ import annotations

import binascii
import enum
import importlib
import inspect
import json
import keyword
import math
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, Final

import attrs
import orjson

from zajel.protocol.errors import ProtocolError
from zajel.services._mailbox import Envelope
from zajel.services._peers import Attach

# Every module whose public attrs classes (and enums) may cross between nodes: the decoded
# client messages, the requests and replies of every service, the store's writes and records.
MODULES: Final = (
    "zajel.protocol.frames",
    "zajel.protocol.signaling",
    "zajel.protocol.relay",
    "zajel.protocol.channels",
    "zajel.protocol.chunks",
    "zajel.protocol.servers",
    "zajel.protocol.attestation",
    "zajel.services._mailbox",
    "zajel.services._durable",
    "zajel.services._peers",
    "zajel.services.signaling",
    "zajel.services.relay",
    "zajel.services.chunk_index",
    "zajel.services.servers",
    "zajel.services.attestation",
    "zajel.storage.interface",
)

# Classes of those modules that hold live objects of this process, with the reason.
LOCAL_ONLY: Final[Mapping[type, str]] = {
    Attach: "it holds a live Peer (the cluster layer sends an attach separately)",
    Envelope: "it holds a reply channel of this process",
}

_INT_MIN: Final = -(2**63)
_INT_END: Final = 2**64  # orjson writes integers in [-2**63, 2**64)
_PREFIX: Final = "zajel."
_FLOAT_NAMES: Final = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_STDLIB_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class WireError(ValueError):
    """A value that cannot be sent between nodes, or bytes that are not a message of this
    schema (an unknown class name, a malformed tag, fields that do not match)."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-JSON constant {name}")


_STDLIB_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


@attrs.frozen
class _Class:
    """What the codec keeps of one registered attrs class, computed once."""

    cls: type
    name: str
    fields: tuple[str, ...]  # attribute names, in field order: the keys on the wire
    aliases: tuple[str, ...]  # the matching ``__init__`` parameters
    positional: bool  # ``cls(*values)`` builds it (no keyword-only field)


def wire_name(cls: type) -> str:
    """The name ``cls`` has on the wire: its module without ``zajel.``, and its qualname."""
    module = cls.__module__
    if module.startswith(_PREFIX):
        module = module[len(_PREFIX) :]
    return f"{module}.{cls.__qualname__}"


def _defined_in(module: ModuleType) -> Iterable[type]:
    """The public classes ``module`` itself defines (not those it imports)."""
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
            yield obj


class Codec:
    """Encoding and decoding against one registry of classes.

    ``to_wire`` gives a structure orjson can write (dicts with string keys, lists, strings,
    numbers, booleans, None); ``from_wire`` takes one back; ``dumps`` and ``loads`` add the
    bytes. The default codec, over ``MODULES``, is this module's ``CODEC``; tests build others.
    """

    def __init__(
        self, modules: Iterable[ModuleType | str], local_only: Mapping[type, str] = LOCAL_ONLY
    ) -> None:
        classes: dict[str, _Class] = {}
        enums: dict[str, type[enum.Enum]] = {}
        for entry in modules:
            module = importlib.import_module(entry) if isinstance(entry, str) else entry
            for cls in _defined_in(module):
                if cls in local_only:
                    continue
                name = wire_name(cls)
                if name in classes or name in enums:
                    raise AssertionError(f"two classes are named {name!r} on the wire")
                if attrs.has(cls):
                    classes[name] = _describe(cls, name)
                elif issubclass(cls, enum.Enum):
                    enums[name] = cls
        self.classes: Mapping[str, type] = {name: spec.cls for name, spec in classes.items()}
        self.enums: Mapping[str, type[enum.Enum]] = dict(enums)
        self._local_only = dict(local_only)
        self._encode_value, self._decode_value = _build(classes, enums, self._local_only)

    def to_wire(self, value: Any) -> Any:
        """``value`` as plain JSON data.

        Raises:
            WireError: ``value`` holds something that cannot cross: a live object
                (``LOCAL_ONLY``), an attrs class that is not registered, any other type, or
                nesting deeper than Python's recursion limit allows.
        """
        try:
            return self._encode_value(value)
        except RecursionError:
            raise WireError("value nested too deeply to send") from None
        except ValueError as exc:  # WireError, or an integer of more digits than str() takes
            if isinstance(exc, WireError):
                raise
            raise WireError(f"cannot send value: {exc}") from exc

    def from_wire(self, data: Any) -> Any:
        """The value ``to_wire`` made ``data`` from.

        Raises:
            WireError: an unknown class or enum name or tag, a malformed tag, fields that are
                not exactly those of the class, or a constructor that refuses them.
        """
        try:
            return self._decode_value(data)
        except WireError:
            raise
        except RecursionError:
            raise WireError("message nested too deeply") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise WireError(f"malformed message: {type(exc).__name__}: {exc}") from exc

    def dumps(self, value: Any) -> bytes:
        """``value`` as compact JSON bytes (UTF-8; ASCII on the rare fallback path).

        orjson writes it; a value orjson refuses (a lone surrogate in a string, nesting past
        its 254 levels) is written by the stdlib encoder, with ``\\u`` escapes.

        Raises:
            WireError: as ``to_wire``.
        """
        wire = self.to_wire(value)
        try:
            return orjson.dumps(wire)
        except orjson.JSONEncodeError:
            pass
        try:
            return _STDLIB_ENCODER.encode(wire).encode("ascii")
        except RecursionError:
            raise WireError("value nested too deeply to send") from None

    def loads(self, data: bytes | str) -> Any:
        """The value ``dumps`` made ``data`` from.

        Raises:
            WireError: ``data`` is not JSON, or not a message of this schema (``from_wire``).
        """
        try:
            wire = orjson.loads(data)
        except orjson.JSONDecodeError:
            # What orjson refuses and ``dumps`` can write: lone surrogate escapes, deep nesting.
            try:
                text = data.decode("utf-8") if isinstance(data, bytes) else data
                wire = _STDLIB_DECODER.decode(text)
            except RecursionError:
                raise WireError("message nested too deeply") from None
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise WireError(f"not a JSON message: {exc}") from exc
        return self.from_wire(wire)


def _describe(cls: type, name: str) -> _Class:
    fields = [field for field in attrs.fields(cls) if field.init]
    names = tuple(field.name for field in fields)
    aliases = tuple(field.alias or field.name for field in fields)
    # They are written into the generated encoder and decoder (``_instance_encoder``).
    if not all(word.isidentifier() and not keyword.iskeyword(word) for word in names + aliases):
        raise AssertionError(f"{name} has a field whose name is not an identifier")
    return _Class(
        cls=cls,
        name=name,
        fields=names,
        aliases=aliases,
        positional=not any(field.kw_only for field in fields),
    )


def _build(
    classes: Mapping[str, _Class],
    enums: Mapping[str, type[enum.Enum]],
    local_only: Mapping[type, str],
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The encoder and decoder over ``classes`` and ``enums``: closures over tables made once,
    so the work per value is a type test or a type lookup and one handler.

    On the hot path (every message between nodes) a value that is sent as it is (a string,
    ``None``, a bool; on decoding anything but a dict or a list) is tested inline, without a
    call: a call costs more than the test.
    """
    plain: frozenset[type] = frozenset({str, bool, type(None)})  # sent as they are
    containers: frozenset[type] = frozenset({dict, list})  # what decoding must look into
    encoders: dict[type, Callable[[Any], Any]] = {}

    def encode(value: Any) -> Any:
        # Dicts and lists are handled here, with loops rather than comprehensions (a frame
        # each in Python 3.11): one frame per level of nesting, so a payload nested as deep as
        # a node can relay it itself (nearly Python's recursion limit) still crosses.
        kind = type(value)
        if kind in plain:
            return value
        if kind is dict:
            out: dict[str, Any] = {}
            for key, item in value.items():
                if type(key) is not str:
                    return {"@m": [[encode(key), encode(item)] for key, item in value.items()]}
                out[key] = item if type(item) in plain else encode(item)
            for first in out:
                if first[:1] == "@":
                    return {"@d": out}
                break
            return out
        if kind is list:
            items: list[Any] = []
            append = items.append
            for item in value:
                append(item if type(item) in plain else encode(item))
            return items
        if kind is int:
            return value if _INT_MIN <= value < _INT_END else {"@i": str(value)}
        handler = encoders.get(kind)
        if handler is None:
            raise _unsendable(kind, local_only)
        return handler(value)

    def encode_float(value: float) -> Any:
        if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
            return value
        return {"@f": "nan" if value != value else ("inf" if value > 0 else "-inf")}

    def encode_tuple(value: tuple[Any, ...]) -> Any:
        return {"@t": [item if type(item) in plain else encode(item) for item in value]}

    def encode_bytes(value: bytes) -> Any:
        return {"@b": binascii.b2a_base64(value, newline=False).decode("ascii")}

    def encode_set(value: set[Any]) -> Any:
        return {"@s": [encode(item) for item in value]}

    def encode_frozenset(value: frozenset[Any]) -> Any:
        return {"@fs": [encode(item) for item in value]}

    def encode_error(value: ProtocolError) -> Any:
        return {"@x": [value.code, value.message]}

    def member_encoder(name: str) -> Callable[[Any], Any]:
        def encode_member(value: enum.Enum) -> Any:
            return {"@e": name, "v": value.name}

        return encode_member

    encoders.update(
        {
            float: encode_float,
            tuple: encode_tuple,
            bytes: encode_bytes,
            set: encode_set,
            frozenset: encode_frozenset,
            ProtocolError: encode_error,
        }
    )
    for spec in classes.values():
        encoders[spec.cls] = _instance_encoder(spec, plain, encode)
    for name, cls in enums.items():
        encoders[cls] = member_encoder(name)

    # -- decoding ---------------------------------------------------------------------------

    def decode(data: Any) -> Any:
        kind = type(data)
        if kind is dict:
            for first in data:
                if first[:1] == "@":
                    if first == "@":
                        name = data["@"]
                        instance = instances.get(name) if type(name) is str else None
                        if instance is None:
                            raise WireError(
                                f"unknown class {str(name)[:128]!r}: not in the registry"
                                " (zajel.cluster.wire.MODULES)"
                            )
                        return instance(data)
                    handler = tags.get(first)
                    if handler is None:
                        raise WireError(f"unknown tag {first[:64]!r}")
                    return handler(data)
                break
            out: dict[str, Any] = {}
            for key, item in data.items():
                out[key] = decode(item) if type(item) in containers else item
            return out
        if kind is list:
            items: list[Any] = []
            append = items.append
            for item in data:
                append(decode(item) if type(item) in containers else item)
            return items
        return data

    def items_of(data: dict[str, Any], tag: str) -> list[Any]:
        items = data[tag]
        if len(data) != 1 or type(items) is not list:
            raise WireError(f"malformed {tag!r}: expected {{{tag!r}: [...]}}")
        return items

    def string_of(data: dict[str, Any], tag: str) -> str:
        text = data[tag]
        if len(data) != 1 or type(text) is not str:
            raise WireError(f'malformed {tag!r}: expected {{{tag!r}: "..."}}')
        return text

    def decode_tuple(data: dict[str, Any]) -> Any:
        return tuple(
            [decode(item) if type(item) in containers else item for item in items_of(data, "@t")]
        )

    def decode_escaped(data: dict[str, Any]) -> Any:
        inner = data["@d"]
        if len(data) != 1 or type(inner) is not dict:
            raise WireError("malformed '@d': expected {'@d': {...}}")
        return {
            key: decode(item) if type(item) in containers else item for key, item in inner.items()
        }

    def decode_map(data: dict[str, Any]) -> Any:
        out: dict[Any, Any] = {}
        for pair in items_of(data, "@m"):
            if type(pair) is not list or len(pair) != 2:
                raise WireError("malformed '@m': expected [key, value] pairs")
            out[decode(pair[0])] = decode(pair[1])
        return out

    def decode_bytes(data: dict[str, Any]) -> Any:
        try:
            return binascii.a2b_base64(string_of(data, "@b"), strict_mode=True)
        except binascii.Error as exc:
            raise WireError(f"malformed '@b': {exc}") from exc

    def decode_float(data: dict[str, Any]) -> Any:
        text = string_of(data, "@f")
        if text not in _FLOAT_NAMES:
            raise WireError(f"malformed '@f': {text[:16]!r}")
        return _FLOAT_NAMES[text]

    def decode_int(data: dict[str, Any]) -> Any:
        return int(string_of(data, "@i"))

    def decode_set(data: dict[str, Any]) -> Any:
        return {decode(item) for item in items_of(data, "@s")}

    def decode_frozenset(data: dict[str, Any]) -> Any:
        return frozenset([decode(item) for item in items_of(data, "@fs")])

    def decode_member(data: dict[str, Any]) -> Any:
        name, member = data["@e"], data.get("v")
        cls = enums.get(name) if type(name) is str else None
        if cls is None:
            raise WireError(f"unknown enum {str(name)[:128]!r}: not in the registry")
        if len(data) != 2 or type(member) is not str or member not in cls.__members__:
            raise WireError(f"malformed '@e': no member {str(member)[:64]!r} in {name}")
        return cls[member]

    def decode_error(data: dict[str, Any]) -> Any:
        pair = items_of(data, "@x")
        if len(pair) != 2 or not all(type(part) is str for part in pair):
            raise WireError("malformed '@x': expected [code, message]")
        return ProtocolError(pair[0], pair[1])

    instances = {
        name: _instance_decoder(spec, containers, decode) for name, spec in classes.items()
    }
    tags: dict[str, Callable[[dict[str, Any]], Any]] = {
        "@t": decode_tuple,
        "@d": decode_escaped,
        "@m": decode_map,
        "@b": decode_bytes,
        "@f": decode_float,
        "@i": decode_int,
        "@s": decode_set,
        "@fs": decode_frozenset,
        "@e": decode_member,
        "@x": decode_error,
    }
    return encode, decode


def _compile(source: str, function: str, namespace: dict[str, Any]) -> Callable[[Any], Any]:
    """The function ``function`` that ``source`` defines, with ``namespace`` as its globals."""
    exec(compile(source, f"<zajel.cluster.wire {function}>", "exec"), namespace)
    compiled: Callable[[Any], Any] = namespace[function]
    return compiled


def _instance_encoder(
    spec: _Class, plain: frozenset[type], encode: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """The encoder of ``spec``'s instances, written out for its fields (as attrs writes
    ``__init__``): one attribute read and one inline type test per field, no loop.

    For ``Identity``::

        def encode_instance(value):
            v0 = value.dialect
            v1 = value.peer_id
            v2 = value.public_key
            return {"@": NAME,
                    "dialect": v0 if type(v0) in plain else encode(v0), ...}
    """
    lines = ["def encode_instance(value):"]
    items = ['"@": NAME']
    for index, field in enumerate(spec.fields):
        lines.append(f"    v{index} = value.{field}")
        items.append(f"{field!r}: v{index} if type(v{index}) in plain else encode(v{index})")
    lines.append(f"    return {{{', '.join(items)}}}")
    namespace = {"NAME": spec.name, "plain": plain, "encode": encode}
    return _compile("\n".join(lines), "encode_instance", namespace)


def _instance_decoder(
    spec: _Class, containers: frozenset[type], decode: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """The decoder of ``spec``'s instances, written out for its fields: exactly these keys (and
    ``"@"``), each value decoded only when it is a dict or a list, then the constructor.

    For ``Identity``::

        def decode_instance(data):
            if len(data) != 4:
                raise mismatch(data)
            try:
                v0 = data["dialect"]
                ...
            except KeyError:
                raise mismatch(data) from None
            if type(v0) in containers:
                v0 = decode(v0)
            ...
            try:
                return cls(v0, v1, v2)
            except (TypeError, ValueError) as exc:
                raise refused(exc) from exc
    """
    count = len(spec.fields)
    lines = [
        "def decode_instance(data):",
        f"    if len(data) != {count + 1}:",
        "        raise mismatch(data)",
    ]
    if count:
        lines.append("    try:")
        lines += [f"        v{index} = data[{field!r}]" for index, field in enumerate(spec.fields)]
        lines += ["    except KeyError:", "        raise mismatch(data) from None"]
    for index in range(count):
        lines += [f"    if type(v{index}) in containers:", f"        v{index} = decode(v{index})"]
    if spec.positional:
        arguments = [f"v{index}" for index in range(count)]
    else:
        arguments = [f"{alias}=v{index}" for index, alias in enumerate(spec.aliases)]
    lines += [
        "    try:",
        f"        return cls({', '.join(arguments)})",
        "    except (TypeError, ValueError) as exc:",
        "        raise refused(exc) from exc",
    ]

    def mismatch(data: Mapping[str, Any]) -> WireError:
        return _field_mismatch(spec, data)

    def refused(exc: Exception) -> WireError:
        # attrs' validators put the message first and the attribute after it.
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else exc
        return WireError(f"{spec.name}: {detail}")

    namespace = {
        "cls": spec.cls,
        "containers": containers,
        "decode": decode,
        "mismatch": mismatch,
        "refused": refused,
    }
    return _compile("\n".join(lines), "decode_instance", namespace)


def _unsendable(kind: type, local_only: Mapping[type, str]) -> WireError:
    reason = local_only.get(kind)
    if reason is not None:
        return WireError(f"{kind.__qualname__} cannot be sent between nodes: {reason}")
    if attrs.has(kind):
        return WireError(
            f"{wire_name(kind)} is not registered for the wire: its module is not in"
            " zajel.cluster.wire.MODULES"
        )
    return WireError(f"a {kind.__module__}.{kind.__qualname__} cannot be sent between nodes")


def _field_mismatch(spec: _Class, data: Mapping[str, Any]) -> WireError:
    given = set(data) - {"@"}
    missing = [field for field in spec.fields if field not in given]
    extra = sorted(str(key)[:64] for key in given - set(spec.fields))
    return WireError(f"{spec.name}: fields do not match (missing {missing}, unknown {extra[:8]})")


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


class TextMemo:
    """Decodes the JSON texts of values (``dumps(...).decode()``) and keeps those that are safe
    to share: attrs values whose fields are all strings, numbers, booleans or None. Many
    clients send the same request (every subscriber of a chunk asks for it), and a connection
    quotes the same identity on every frame, so most texts are decoded once. At most ``size``
    texts are kept; past that the memo starts again empty."""

    def __init__(self, codec: Codec, size: int = 4096) -> None:
        self._codec = codec
        self._size = size
        self._values: dict[str, Any] = {}

    def decode(self, text: str) -> Any:
        value = self._values.get(text)
        if value is not None:
            return value
        value = self._codec.loads(text)
        if attrs.has(type(value)) and all(
            type(getattr(value, field.name)) in _SCALARS for field in attrs.fields(type(value))
        ):
            if len(self._values) >= self._size:
                self._values.clear()
            self._values[text] = value
        return value

    def __len__(self) -> int:
        return len(self._values)


CODEC: Final = Codec(MODULES)
# The default codec's functions, for the cluster layer.
to_wire: Final = CODEC.to_wire
from_wire: Final = CODEC.from_wire
dumps: Final = CODEC.dumps
loads: Final = CODEC.loads
