"""SavedModel export with serving signatures (loads with TensorFlow alone, no gsto_tf needed).

Signatures:

* ``serving_default``: ``images`` uint8 RGB ``[N, H, W, 3]`` of any size -> ``labels`` int32 ``[N, H, W]`` and
  ``probabilities`` float32 ``[N, H, W, K]`` (softmax), both at the input resolution;
* ``serving_normalized``: ``images`` float32 ``[N, H, W, 3]`` already normalised (ImageNet mean/std) -> the same.

Requests are checked in the graph, so a server answers a bad request with an error instead of crashing or running
out of memory: the images must be rank 4, non-empty, with exactly 3 (RGB) channels (no silent conversion: send
greyscale as 3 equal channels, drop an alpha channel), and one request may hold at most ``max_pixels`` pixels in
total (:data:`DEFAULT_MAX_PIXELS` = 4 Cityscapes frames unless set at export, 0 = no cap). The cap is stored in the
export as the variable ``max_pixels`` (``tf.saved_model.load(path).max_pixels``).

The cap counts what the network's memory grows with, not the raw pixels: each side is rounded up to a multiple of
:data:`OUTPUT_STRIDE` (32, the stride of the coarsest branch), ``N x ceil32(H) x ceil32(W)``. Strided convolutions
never shrink a side below 1, so a 1 x 8M-pixel strip keeps 8M / 2**k positions at stride 2**k where a 2048 x 4096
frame keeps 8M / 4**k: counted raw, it passed the cap and took more than 7 GiB. Counted padded, it is refused, and
sizes that are multiples of 32 (Cityscapes' 1024 x 2048) count exactly as before.

Normalisation (:func:`gsto_tf.data.normalization.normalize_image`) and resizing
(:func:`gsto_tf.layers.resize.resize_bilinear`) are traced into the graph. The folder is written next to its
destination and renamed into place, so a reader never sees a partial export; it gets the usual (umask)
permissions, so a server running as another user can read it.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from gsto_tf.atomic import default_permissions, make_temp_dir, storage_errors
from gsto_tf.checkpoints import check_finite
from gsto_tf.data.normalization import NORMALIZED_LIMIT, normalize_image
from gsto_tf.layers.resize import resize_bilinear
from gsto_tf.models import inference_model

DEFAULT_MAX_PIXELS = 4 * 1024 * 2048
OUTPUT_STRIDE = 32  # the coarsest branch of HRNet / the dilated ResNets is at most 1/32 of the input


class SegmentationServingModule(tf.Module):
    def __init__(self, model, max_pixels=DEFAULT_MAX_PIXELS, fold_batch_norm=True):
        super().__init__(name="gsto_tf_serving")
        self.model = inference_model(model, fold_batch_norm=fold_batch_norm)
        if max_pixels is None or int(max_pixels) < 0:
            raise ValueError(f"max_pixels must be a non-negative int (0 = no cap), got {max_pixels!r}")
        self.max_pixels = tf.Variable(int(max_pixels), dtype=tf.int64, trainable=False, name="max_pixels")

    def _predict(self, normalised):
        logits = tf.cast(self.model(normalised, training=False), tf.float32)
        logits = resize_bilinear(logits, tf.shape(normalised)[1:3])
        return {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    def _checked(self, images):
        """``images`` after run-time checks of rank, size, channels and the pixel cap.

        A loaded signature does not check the shape of what it is fed, and a rank-3 image or a 4-channel one
        reaching the first convolution aborts the whole process inside oneDNN (a CHECK failure, not an exception).
        The static shape is [?, ?, ?, 3], so ``tf.rank`` / ``assert_rank`` would be folded away; unstacking the
        run-time shape into exactly 4 values is not, and each check fails with an InvalidArgumentError that a
        server returns to the client.
        """
        n, h, w, channels = tf.unstack(tf.shape(images), num=4, name="expect_rank_4_NHWC")

        def padded(side):  # ceil to a multiple of OUTPUT_STRIDE (module doc)
            side = tf.cast(side, tf.int64)
            return (side + OUTPUT_STRIDE - 1) // OUTPUT_STRIDE * OUTPUT_STRIDE

        pixels = tf.cast(n, tf.int64) * padded(h) * padded(w)
        checks = [
            tf.debugging.assert_greater(tf.reduce_min([n, h, w]), 0, message="images: empty batch or image"),
            tf.debugging.Assert(tf.equal(channels, 3), [
                "images: expected RGB images [N, H, W, 3], got", channels, "channels (send greyscale as 3 equal "
                "channels, drop an alpha channel)"]),
            tf.debugging.Assert(tf.logical_or(tf.equal(self.max_pixels, 0), pixels <= self.max_pixels), [
                "images: the request counts", pixels, "pixels (N x H x W, each side rounded up to a multiple of 32), "
                "more than this export allows (max_pixels):", self.max_pixels]),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_uint8(self, images):
        return self._predict(normalize_image(self._checked(images)))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve_normalized(self, images):
        images = self._checked(images)
        # NaN fails the comparison too: only finite values within the normalised range pass
        in_range = tf.reduce_all(tf.abs(images) <= NORMALIZED_LIMIT)
        check = tf.debugging.Assert(in_range, [
            f"images: serving_normalized takes normalised images (values within +-{NORMALIZED_LIMIT:g}); found NaN, "
            "Inf or larger values (0-255 pixels go to serving_default as uint8). Largest |value|:",
            tf.reduce_max(tf.abs(images))])
        with tf.control_dependencies([check]):
            return self._predict(tf.identity(images))


def export_saved_model(model, path, overwrite=False, max_pixels=DEFAULT_MAX_PIXELS, fold_batch_norm=True,
                       allow_nonfinite=False):
    """Export ``model`` (a gsto_tf model or any Keras model with one logits output) to ``path``; requests of more
    than ``max_pixels`` pixels (N x H x W, 0 = no cap) are refused by the signatures. ``fold_batch_norm``: export
    the graph with BatchNorm folded into the convolutions (:mod:`gsto_tf.models.folding`; same outputs, fewer
    ops). Weights holding NaN / Inf are refused (:class:`~gsto_tf.models.CheckpointError`) unless
    ``allow_nonfinite``."""
    check_finite(model, f"export of model '{model.name}'", allow_nonfinite)
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"export: {path} exists (pass overwrite=True / --overwrite to replace it)")
    parent = os.path.dirname(path)
    module = SegmentationServingModule(model, max_pixels, fold_batch_norm)
    signatures = {"serving_default": module.serve_uint8.get_concrete_function(),
                  "serving_normalized": module.serve_normalized.get_concrete_function()}
    with storage_errors(path):  # full disk, read-only folder: one sentence, the previous export intact
        os.makedirs(parent, exist_ok=True)
        tmp = make_temp_dir(parent, ".export-")
        try:
            tf.saved_model.save(module, tmp, signatures=signatures)
            default_permissions(tmp, recursive=True)
            if os.path.exists(path):
                old = tempfile.mkdtemp(dir=parent, prefix=".old-")
                os.rename(path, os.path.join(old, "x"))
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path
