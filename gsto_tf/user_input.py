"""What users write, read safely and quoted back briefly: YAML (dataset cards, ``--config`` files, ``--set``
values) is parsed safe, without aliases, bounded in size, with errors that fit on one line; values and texts quoted
in error messages are clipped.

Anchors and aliases (``&a`` / ``*a``) are refused: no card or config needs them, and refusing them rules out the
"billion laughs" bombs that expand a few hundred bytes into gigabytes when the value is later written or printed.
"""

import argparse
import difflib

import yaml

MAX_YAML_BYTES = 1 << 20  # a card or a config is a page of text; anything larger is not one


class YAMLInputError(ValueError):
    """User YAML that cannot be read; the message is one line, and names the source."""


MAX_YAML_DEPTH = 32  # nesting of mappings and lists; the deepest card or config is 4 levels
MAX_INT_DIGITS = 30  # integer literals; any real count, size or seed has far fewer digits


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases, duplicate keys, nesting deeper than MAX_YAML_DEPTH or integers longer than
    MAX_INT_DIGITS digits (Python refuses to read 4300 and more)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        if self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            self._depth += 1
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {shorten(key)} given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {digits} digits (at most "
                                                    f"{MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_yaml_int)


def clip(text, limit=300):
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shorten(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters: error messages quote values, never whole files (nor a crafted
    structure too deep to print)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deep to print>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_yaml(text, where):
    """Parse ``text`` (a string or a text file object) as safe YAML without aliases; ``where`` names the source."""
    if hasattr(text, "read"):
        text = text.read(MAX_YAML_BYTES + 1)
    if len(text) > MAX_YAML_BYTES:
        raise YAMLInputError(f"{where}: more than {MAX_YAML_BYTES} bytes of YAML")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"{where}: not valid YAML ({clip(exc)})") from None


def size_or_none(text):
    """``"HxW"`` -> ``(H, W)`` (positive integers), or None where ``text`` is not that."""
    try:
        height, width = (int(v) for v in str(text).strip().lower().split("x"))
    except ValueError:
        return None
    return (height, width) if height > 0 and width > 0 else None


def parse_size(text):
    """``"HxW"`` -> ``(H, W)``, both positive integers. Meant as an argparse ``type=``: argparse then names the
    argument in the error (``argument --input-size: expected HxW ...``)."""
    size = size_or_none(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers (e.g. 1024x2048), got {text!r}")
    return size


def int_in(lo, hi):
    """An argparse ``type=`` for an integer in ``lo..hi`` (argparse then names the argument in the error)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {text!r}")
        return value

    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


def did_you_mean(word, choices):
    """``"did you mean X? "`` naming the choices closest to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3)
    return f"did you mean {' or '.join(close)}? " if close else ""


def not_utf8(path):
    """True when ``path`` holds bytes that are not UTF-8 (Python keeps them as surrogate escapes, which TensorFlow's
    string tensors cannot hold)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False

