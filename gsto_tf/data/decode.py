"""Reading dataset files: one image decoder and one label decoder, for the tf.data pipelines, `data verify` and the
tfds builders alike.

Labels must be single-channel 8-bit PNGs (greyscale), or palette PNGs whose palette *indices* are the ids
(PASCAL-Context and LIP labels are often saved that way; a viewer shows the palette colours, the file holds the
ids). Anything else is refused, naming the file and what it is: a 16-bit or 1/2/4-bit greyscale PNG, an RGB(A) or
greyscale+alpha PNG, JPEG data under a ``.png`` name, a file that is not a PNG at all, or a PNG cut short.

``tf.io.decode_png`` turns a palette PNG into its RGB colours, and a 16-bit one into its high bytes, so the label
decoder reads the PNG header (IHDR) itself: an 8-bit greyscale PNG is decoded as is; for a palette PNG the header's
colour type is rewritten to greyscale (and its CRC patched; CRC-32 is affine, so that is one XOR with a constant),
and libpng then returns the raw indices (scaled to 0..255 for 1/2/4-bit palettes, which is undone). Everything is
TensorFlow ops, so the decoder runs inside tf.data (parallel, no Python) and, eagerly, in `data verify` and the
tfds builders.

Images are PNG, JPEG, BMP or GIF (signature checked); a PNG or JPEG whose end marker (IEND chunk / EOI) is missing
from its last 256 bytes is reported as truncated. A file whose header and end are intact but whose data is corrupt
still fails inside the decoder, whose error does not name the file; `data verify` decodes file by file and does.

Every failure is a ``tf.debugging.Assert`` whose message is ``"<path>: <what>"`` behind :data:`ERROR_MARK`;
:func:`dataset_error` / :func:`reading_data` turn the TensorFlow error (raised while iterating a dataset or inside
``model.fit``) into a one-line :class:`~gsto_tf.data.layouts.DatasetError`.
"""

import contextlib
import re
import zlib

import numpy as np
import tensorflow as tf

from gsto_tf.data.layouts import DatasetError
from gsto_tf.images import MAX_IMAGE_PIXELS

ERROR_MARK = "gsto_tf data error"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_SIGNATURES = (_PNG_SIGNATURE, b"\xff\xd8\xff", b"BM", b"GIF8")  # PNG, JPEG, BMP, GIF (decode_image's)
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC
_JPEG_END = b"\xff\xd9"  # EOI; cannot occur inside entropy-coded data (0xFF is stuffed there)
_TAIL = 256  # bytes searched for the end marker (some writers append a little after it)
_COLOUR_TYPES = ("a greyscale", "an unknown", "an RGB", "a palette", "a greyscale+alpha", "an unknown", "an RGBA",
                 "an unknown")  # PNG colour types 0..6, then anything else
_PALETTE, _GREY = 3, 0
# IHDR CRC change when the colour type byte (offset 13 of the chunk type + data) goes from 3 to 0:
# crc(x ^ d) = crc(x) ^ crc(d) ^ crc(0) for equally long inputs.
_IHDR_DELTA = bytes(13) + bytes([_PALETTE ^ _GREY]) + bytes(3)
_CRC_XOR = np.frombuffer((zlib.crc32(_IHDR_DELTA) ^ zlib.crc32(bytes(17))).to_bytes(4, "big"), np.uint8)


def _check(bad, message):
    """An Assert op that fails with ``message()`` (a string tensor, built only on failure) when ``bad``."""
    text = tf.cond(bad, message, lambda: tf.constant(""))
    return tf.debugging.Assert(tf.logical_not(bad), [ERROR_MARK, text])


def _head(data, n):
    """The first ``n`` bytes as uint8 [n], zero-padded when the file is shorter."""
    padded = tf.strings.join([tf.strings.substr(data, 0, n), tf.constant(bytes(n))])
    return tf.io.decode_raw(tf.strings.substr(padded, 0, n), tf.uint8)


def _starts_with(head, prefix):
    return tf.reduce_all(tf.equal(head[:len(prefix)], tf.constant(np.frombuffer(prefix, np.uint8))))


def _ends_with_marker(data, marker):
    """Whether ``marker`` occurs in the last :data:`_TAIL` bytes of ``data``."""
    n = tf.strings.length(data)
    tail = tf.io.decode_raw(tf.strings.substr(data, tf.maximum(n - _TAIL, 0), _TAIL), tf.uint8)
    m = tf.shape(tail)[0] - len(marker) + 1
    hits = [tf.equal(tail[i:i + tf.maximum(m, 0)], byte) for i, byte in enumerate(marker)]
    return tf.reduce_any(tf.reduce_all(tf.stack(hits), axis=0))


def _join(*parts):
    return tf.strings.join([tf.strings.as_string(p) if p.dtype != tf.string else p
                            for p in map(tf.convert_to_tensor, parts)])


def _png_size(head):
    """(height, width) int64 from the IHDR chunk of a PNG's first 24 bytes."""
    value = tf.cast(head[16:24], tf.int64) * tf.constant([1 << 24, 1 << 16, 1 << 8, 1] * 2, tf.int64)
    return tf.reduce_sum(value[4:]), tf.reduce_sum(value[:4])


def _size_check(height, width, path):
    """An Assert op refusing an image of more than MAX_IMAGE_PIXELS pixels, before it is decoded."""
    return _check(height * width > MAX_IMAGE_PIXELS, lambda: _join(
        path, ": ", width, "x", height, f" image; at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels are read "
        "(resize it first)"))


def decode_image(data, path):
    """Encoded image bytes -> uint8 ``[H, W, 3]``; a file that is not an image, is truncated or has more than
    MAX_IMAGE_PIXELS pixels fails naming ``path``."""
    head = _head(data, 24)
    is_png, is_jpeg = _starts_with(head, _PNG_SIGNATURE), _starts_with(head, _IMAGE_SIGNATURES[1])
    known = tf.reduce_any(tf.stack([_starts_with(head, s) for s in _IMAGE_SIGNATURES]))
    empty = tf.equal(tf.strings.length(data), 0)
    checks = [_check(tf.logical_not(known), lambda: _join(
        path, ": undecodable image (", tf.where(empty, "an empty file", "not a PNG, JPEG, BMP or GIF file"), ")"))]
    with tf.control_dependencies(checks):  # before looking for the end marker of a file that has none
        truncated = tf.logical_or(tf.logical_and(is_png, tf.logical_not(_ends_with_marker(data, _PNG_END))),
                                  tf.logical_and(is_jpeg, tf.logical_not(_ends_with_marker(data, _JPEG_END))))
        checks.append(_check(truncated, lambda: _join(
            path, ": truncated image (no ", tf.where(is_png, "PNG IEND chunk", "JPEG end marker"), " at its end)")))
    with tf.control_dependencies(checks):  # PNG and JPEG sizes from their headers; BMP and GIF after decoding
        height, width = tf.cond(is_png, lambda: _png_size(head), lambda: tf.cond(
            is_jpeg, lambda: tuple(tf.unstack(tf.image.extract_jpeg_shape(data, tf.int64)[:2])),
            lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64))))
        checks.append(_size_check(height, width, path))
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)
    with tf.control_dependencies([_size_check(shape[0], shape[1], path)]):
        return tf.ensure_shape(tf.identity(image), [None, None, 3])


def _label_format(head, empty):
    """(is an accepted label PNG, description of what the file is) from its first 33 bytes."""
    is_png = tf.logical_and(_starts_with(head, _PNG_SIGNATURE),
                            tf.reduce_all(tf.equal(head[12:16], tf.constant(np.frombuffer(b"IHDR", np.uint8)))))
    depth, colour = tf.cast(head[24], tf.int32), tf.cast(head[25], tf.int32)
    grey8 = tf.logical_and(tf.equal(colour, _GREY), tf.equal(depth, 8))
    palette = tf.logical_and(tf.equal(colour, _PALETTE), tf.reduce_any(tf.equal(depth, [1, 2, 4, 8])))
    accepted = tf.logical_and(is_png, tf.logical_or(grey8, palette))

    def describe():
        colour_name = tf.gather(tf.constant(_COLOUR_TYPES), tf.minimum(colour, len(_COLOUR_TYPES) - 1))
        png = _join(colour_name, " PNG (", depth, "-bit)")
        other = tf.where(_starts_with(head, _IMAGE_SIGNATURES[1]), "JPEG data",
                         tf.where(empty, "an empty file", "a file that is not a PNG"))
        return tf.where(is_png, png, other)

    return accepted, describe


def _palette_indices(data, depth):
    """The index plane of a palette PNG: IHDR colour type 3 -> 0 (CRC patched), then a greyscale decode."""
    crc = tf.bitwise.bitwise_xor(_head(data, 33)[29:33], tf.constant(_CRC_XOR))
    byte_table = tf.constant([bytes([i]) for i in range(256)])
    grey = tf.strings.join([
        tf.strings.substr(data, 0, 25), tf.constant(bytes([_GREY])), tf.strings.substr(data, 26, 3),
        tf.strings.reduce_join(tf.gather(byte_table, tf.cast(crc, tf.int32))),
        tf.strings.substr(data, 33, tf.strings.length(data) - 33),
    ])
    indices = tf.io.decode_png(grey, channels=1)[..., 0]
    # libpng scales 1/2/4-bit greyscale to 0..255 (x 255, 85, 17): back to the indices
    scale = tf.cast(255 // (tf.bitwise.left_shift(1, depth) - 1), tf.uint8)  # depth is 1, 2, 4 or 8 here
    return indices // scale


def decode_label(data, path):
    """Encoded label bytes -> uint8 ``[H, W]`` raw ids. Accepts 8-bit greyscale and palette PNGs (indices are
    the ids); anything else fails naming ``path`` and what the file is."""
    head = _head(data, 33)
    accepted, describe = _label_format(head, tf.equal(tf.strings.length(data), 0))
    checks = [_check(tf.logical_not(accepted), lambda: _join(
        path, ": labels must be single-channel 8-bit PNGs (or palette PNGs whose indices are the ids); found ",
        describe()))]
    with tf.control_dependencies(checks):
        checks.append(_check(tf.logical_not(_ends_with_marker(data, _PNG_END)),
                             lambda: _join(path, ": truncated label PNG (no IEND chunk at its end)")))
        checks.append(_size_check(*_png_size(head), path))
    with tf.control_dependencies(checks):
        depth = tf.cast(head[24], tf.int32)
        label = tf.cond(tf.equal(tf.cast(head[25], tf.int32), _PALETTE),
                        lambda: _palette_indices(data, depth),
                        lambda: tf.io.decode_png(data, channels=1)[..., 0])
    return tf.ensure_shape(label, [None, None])


def map_label_values(spec, raw, path):
    """Raw ids -> int32 train ids with the dataset's mapping; values that are neither a raw id of the dataset nor
    ignore fail, naming ``path`` and the values."""
    train = spec.map_labels(raw)
    invalid = train < 0

    def message():
        values = tf.sort(tf.unique(tf.boolean_mask(tf.reshape(raw, [-1]), tf.reshape(invalid, [-1])))[0])
        text = _join(path, ": label values ", tf.strings.format("{}", values, summarize=12),
                     " are neither a class nor void")
        hint = spec.invalid_values_hint
        if hint:
            text = tf.where(tf.reduce_any(tf.equal(values, spec.ignore_label)), _join(text, " (", hint, ")"), text)
        return text

    with tf.control_dependencies([_check(tf.reduce_any(invalid), message)]):
        return tf.identity(train)


def check_same_size(image, label, image_path, label_path):
    """An Assert op: the label has the image's height and width."""
    image_hw, label_hw = tf.shape(image)[:2], tf.shape(label)[:2]
    return _check(tf.reduce_any(tf.not_equal(image_hw, label_hw)), lambda: _join(
        label_path, ": label size (", label_hw[0], ", ", label_hw[1], ") differs from image size (", image_hw[0],
        ", ", image_hw[1], ") of ", image_path))


def read_pair(spec, image_path, label_path):
    """Read one pair -> (uint8 image [H, W, 3], int32 train-id label [H, W]); every error names the file."""
    image = decode_image(tf.io.read_file(image_path), image_path)
    raw = decode_label(tf.io.read_file(label_path), label_path)
    with tf.control_dependencies([check_same_size(image, raw, image_path, label_path)]):
        return image, map_label_values(spec, raw, label_path)


# --- eager use (data verify, tfds builders) and one-line errors -----------------------------------------------------

_ASSERT_MESSAGE = re.compile(r"assertion failed: \[" + re.escape(ERROR_MARK) + r"\] \[(.*)\]\s*$", re.M)
_TF_NOISE = (re.compile(r"\{\{function_node [^}]*\}\}\s*"),
             re.compile(r"Error in user-defined function passed to \S+ transformation with iterator: \S+: "))


def dataset_error(exc):
    """A one-line :class:`DatasetError` for a TensorFlow error raised while reading data (iterating a dataset or in
    ``model.fit``), or None when ``exc`` does not come from reading data."""
    message = getattr(exc, "message", str(exc))
    found = _ASSERT_MESSAGE.search(message)
    if found:
        return DatasetError(found.group(1))
    if isinstance(exc, tf.errors.OpError) and ("IteratorGetNext" in message or "Iterator::" in message):
        return DatasetError(f"reading the dataset failed: {_reason(exc)} (the decoder does not say which file; "
                            "`gsto-tf data verify` checks every file and names the bad ones)")
    return None


def _reason(exc):
    """The decoder's own sentence in a TensorFlow error (e.g. libjpeg's "Invalid JPEG data"), without the graph
    execution preamble, the node names and the stack."""
    text = getattr(exc, "message", str(exc)).split("\n\t [[", 1)[0]
    for noise in _TF_NOISE:
        text = noise.sub("", text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    lines = [line for line in lines if not line.startswith(("Graph execution error", "Detected at node"))]
    return lines[-1].rstrip(". ") if lines else type(exc).__name__


@contextlib.contextmanager
def reading_data(samples=None):
    """Turn TensorFlow errors raised while reading data inside the block into one-line DatasetErrors. When the
    decoder's error names no file and ``samples`` (the ``(image, label)`` paths being read) are given, they are
    decoded one by one to find the file, and the error names it."""
    try:
        yield
    except tf.errors.OpError as exc:
        converted = dataset_error(exc)
        if converted is None:
            raise
        if samples and not _ASSERT_MESSAGE.search(getattr(exc, "message", str(exc))):
            converted = _first_bad_file(samples) or converted
        raise converted from None


def _first_bad_file(samples):
    """The DatasetError of the first image or label in ``samples`` that does not decode, or None."""
    for image, label in samples:
        for read, path in ((read_image_file, image), (read_label_file, label)):
            try:
                read(path)
            except DatasetError as exc:
                return exc
    return None


def read_checked(dataset):
    """Iterate ``dataset``, with reading errors raised as one-line DatasetErrors (see :func:`reading_data`)."""
    iterator = iter(dataset)
    while True:
        with reading_data():
            try:
                element = next(iterator)
            except StopIteration:
                return
        yield element


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _read_image(path):
    return decode_image(tf.io.read_file(path), path)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _read_label(path):
    return decode_label(tf.io.read_file(path), path)


def _eager(fn, path, *args):
    """``fn(*args, path)`` (a tf.function) as numpy, its errors as one-line DatasetErrors naming ``path``."""
    try:
        return fn(*args, path).numpy()
    except tf.errors.NotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except tf.errors.OpError as exc:
        converted = dataset_error(exc)
        if converted is not None:
            raise converted from None
        raise DatasetError(f"{path}: undecodable ({_reason(exc)})") from None


def read_image_file(path):
    """uint8 ``[H, W, 3]`` of an image file, with the pipeline's decoder; :class:`DatasetError` naming the file."""
    return _eager(_read_image, str(path))


def read_label_file(path):
    """uint8 ``[H, W]`` raw ids of a label file, with the pipeline's decoder; :class:`DatasetError` naming the
    file."""
    return _eager(_read_label, str(path))


_VALUE_CHECKS = {}


def check_label_values(spec, raw, path):
    """int32 train ids of ``raw`` (numpy uint8), with the pipeline's check; :class:`DatasetError` naming the file
    and the values."""
    key = (spec.card, spec.name)
    if key not in _VALUE_CHECKS:  # traced once per dataset (graph-mode Asserts give the marked message)
        _VALUE_CHECKS[key] = tf.function(
            lambda labels, where: map_label_values(spec, labels, where),
            input_signature=[tf.TensorSpec([None, None], tf.uint8), tf.TensorSpec([], tf.string)])
    return _eager(_VALUE_CHECKS[key], str(path), np.asarray(raw, np.uint8))


def check_sizes(image_hw, label_hw, image_path, label_path):
    """:class:`DatasetError` (the pipeline's message) when a label's height and width are not its image's."""
    if tuple(label_hw) != tuple(image_hw):
        raise DatasetError(f"{label_path}: label size ({label_hw[0]}, {label_hw[1]}) differs from image size "
                           f"({image_hw[0]}, {image_hw[1]}) of {image_path}")


def read_sample_files(spec, image_path, label_path):
    """Check one pair eagerly as the pipeline would -> uint8 raw label ``[H, W]``; the first problem raises a
    :class:`DatasetError` naming the file."""
    image_hw = read_image_file(image_path).shape[:2]
    raw = read_label_file(label_path)
    check_sizes(image_hw, raw.shape, image_path, label_path)
    check_label_values(spec, raw, label_path)
    return raw
