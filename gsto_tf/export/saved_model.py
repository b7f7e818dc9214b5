"""SavedModel export with serving signatures (loads with TensorFlow alone, no gsto_tf needed).

Signatures:

* ``serving_default``: ``images`` uint8 RGB ``[N, H, W, 3]`` of any size -> ``labels`` int32 ``[N, H, W]`` and
  ``probabilities`` float32 ``[N, H, W, K]`` (softmax), both at the input resolution;
* ``serving_normalized``: ``images`` float32 ``[N, H, W, 3]`` already normalised (ImageNet mean/std) -> the same.

Normalisation (:func:`gsto_tf.data.normalization.normalize_image`) and resizing
(:func:`gsto_tf.layers.resize.resize_bilinear`) are traced into the graph. The folder is written next to its
destination and renamed into place, so a reader never sees a partial export.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from gsto_tf.data.normalization import normalize_image
from gsto_tf.layers.resize import resize_bilinear
from gsto_tf.models import inference_model


class SegmentationServingModule(tf.Module):
    def __init__(self, model):
        super().__init__(name="gsto_tf_serving")
        self.model = inference_model(model) if isinstance(model.output, dict) else model

    def _predict(self, normalised):
        logits = tf.cast(self.model(normalised, training=False), tf.float32)
        logits = resize_bilinear(logits, tf.shape(normalised)[1:3])
        return {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    @staticmethod
    def _checked(images):
        """``images`` after a run-time rank check.

        A loaded signature does not check the rank of what it is fed, and a rank-3 image reaching the first
        convolution aborts the whole process inside oneDNN (a CHECK failure, not an exception). The static rank is
        4, so ``tf.rank`` / ``assert_rank`` would be folded away; unstacking the run-time shape into exactly 4
        values is not, and fails with an InvalidArgumentError that a server returns to the client.
        """
        shape = tf.unstack(tf.shape(images), num=4, name="expect_rank_4_NHWC")
        check = tf.debugging.assert_greater(tf.reduce_min(shape[:3]), 0, message="images: empty batch or image")
        with tf.control_dependencies([check]):
            return tf.identity(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_uint8(self, images):
        return self._predict(normalize_image(self._checked(images)))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve_normalized(self, images):
        return self._predict(self._checked(images))


def export_saved_model(model, path, overwrite=False):
    """Export ``model`` (a gsto_tf model or any Keras model with one logits output) to ``path``."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"export: {path} exists (pass overwrite=True / --overwrite to replace it)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    module = SegmentationServingModule(model)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        tf.saved_model.save(module, tmp, signatures={
            "serving_default": module.serve_uint8.get_concrete_function(),
            "serving_normalized": module.serve_normalized.get_concrete_function(),
        })
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
