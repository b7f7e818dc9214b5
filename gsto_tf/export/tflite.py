"""TFLite export through the LiteRT converter, with a runner and a parity report.

The TFLite model takes one *normalised* float32 image ``[1, H, W, 3]`` and returns the float32 logits at the
network's output stride (``[1, ceil(ceil(H/2)/2), ..., K]`` for HRNet): resizing and argmax stay outside, where they
are cheap and flexible. The size is either fixed at export (``input_size=(H, W)``: the interpreter plans all
buffers once, the fastest) or dynamic (``input_size=None``: ``[1, None, None, 3]``, still builtin ops only;
:class:`TFLiteRunner` calls ``resize_tensor_input`` + ``allocate_tensors`` whenever the image size changes).
Quantisation modes:

* ``none``: float32 weights and activations;
* ``fp16``: float16 weights (dequantised at load);
* ``dynamic``: int8 weights, float activations (dynamic-range quantisation);
* ``int8``: full integer quantisation of weights and activations, calibrated on representative images; the
  model's input and output stay float32 (quantise / dequantise ops at the ends).

Only TFLite builtin ops are allowed (no Flex / SELECT_TF_OPS), so the file runs on any LiteRT runtime.
"""

import dataclasses
import os
import warnings

import numpy as np
import tensorflow as tf

from gsto_tf.atomic import write_atomically
from gsto_tf.checkpoints import check_finite
from gsto_tf.data.normalization import NORMALIZED_LIMIT, normalize_image
from gsto_tf.keras_internals import tflite_op_names
from gsto_tf.models import inference_model

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
# The largest image a dynamic-size model is run on by default (TFLiteRunner's max_pixels): 2048x2048. LiteRT plans
# every buffer for the image's size; 3000x3000 takes about 6 GiB.
DYNAMIC_MAX_PIXELS = 2048 * 2048


def convert_to_tflite(model, input_size, quantize="none", representative_images=None, fold_batch_norm=True):
    """Return the bytes of a TFLite flatbuffer for ``model`` at ``input_size`` = (H, W), or any size if ``None``.

    ``fold_batch_norm``: convert the graph with BatchNorm already folded into the convolutions
    (:mod:`gsto_tf.models.folding`); the converter folds the BNs it can match itself, so the file is the same up to
    float rounding either way."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    h, w = (None, None) if input_size is None else (int(v) for v in input_size)
    infer = inference_model(model, fold_batch_norm=fold_batch_norm)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])
    def logits(image):
        return {"logits": tf.cast(infer(image, training=False), tf.float32)}

    # No trackable object: the captured variables are frozen into constants (with one, they would stay
    # resource variables, uninitialised in the interpreter).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([logits.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative_images is None:
            raise ValueError("int8 quantisation needs representative images (normalised float32 [H, W, 3])")
        images = [np.asarray(im, np.float32) for im in representative_images]
        for im in images:
            if im.ndim != 3 or im.shape[-1] != 3 or (h is not None and im.shape != (h, w, 3)):
                expected = "[H, W, 3]" if h is None else str((h, w, 3))
                raise ValueError(f"representative image of shape {im.shape}, expected {expected}")

        def representative():
            for im in images:
                yield [im[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # The int8 graph keeps float32 input / output (normalised images in, logits out), so the converter's
        # "Statistics for quantized inputs were expected" does not apply: there are no quantized inputs.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def export_tflite(model, path, input_size, quantize="none", representative_images=None, overwrite=False,
                  fold_batch_norm=True, allow_nonfinite=False):
    """Convert and write atomically; returns the path. ``input_size=None`` exports a dynamic-size model. An
    existing file is replaced only with ``overwrite=True``. ``fold_batch_norm``: see :func:`convert_to_tflite`.
    Weights holding NaN / Inf are refused (:class:`~gsto_tf.models.CheckpointError`) unless ``allow_nonfinite``."""
    check_finite(model, f"export of model '{model.name}'", allow_nonfinite)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"export: {os.fspath(path)} exists (pass overwrite=True / --overwrite to replace it)")
    data = convert_to_tflite(model, input_size, quantize, representative_images, fold_batch_norm)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return write_atomically(path, write)


class TFLiteRunner:
    """Runs a gsto_tf TFLite file with the LiteRT interpreter.

    Input: one image ``[H, W, 3]`` or ``[1, H, W, 3]``, either uint8 RGB (normalised here with
    :func:`gsto_tf.data.normalization.normalize_image`, as the training data was) or float32 already normalised;
    other dtypes are refused, so an image never runs unnormalised. A fixed-size model checks each image against its
    size; a dynamic-size one (exported with ``input_size=None``) is resized to each new image size
    (``resize_tensor_input`` + ``allocate_tensors``, cheap when the size repeats).
    A float image must be normalised (values within +-NORMALIZED_LIMIT; NaN, Inf and 0-255 floats are refused), and
    a dynamic-size model takes at most ``max_pixels`` pixels (default 2048x2048) per image.
    ``delegate="auto"`` uses LiteRT's default XNNPACK delegate and falls back to the plain builtin kernels if the
    delegate refuses the model (XNNPACK rejects, e.g., some degenerate int8 quantisation parameters);
    ``"xnnpack"`` never falls back, ``"none"`` never uses it. :attr:`delegate` says which one runs.
    """

    DELEGATES = ("auto", "xnnpack", "none")

    def __init__(self, path, num_threads=None, delegate="auto", max_pixels=DYNAMIC_MAX_PIXELS):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        if delegate not in self.DELEGATES:
            raise ValueError(f"TFLiteRunner: `delegate` must be one of {self.DELEGATES}, got {delegate!r}")
        self.path = path
        self.max_pixels = int(max_pixels)
        resolvers = {"xnnpack": OpResolverType.AUTO, "none": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        attempts = ["xnnpack", "none"] if delegate == "auto" else [delegate]
        for k, name in enumerate(attempts):
            try:
                self.interpreter = Interpreter(model_path=path, num_threads=num_threads,
                                               experimental_op_resolver_type=resolvers[name])
                self.interpreter.allocate_tensors()
            except RuntimeError:
                if k == len(attempts) - 1:
                    raise
                continue
            self.delegate = name
            break
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.dynamic = bool(np.any(np.asarray(self.input["shape_signature"]) < 0))

    @property
    def input_shape(self):
        """The exported input shape; ``None`` for a dynamic dimension."""
        return tuple(None if int(d) < 0 else int(d) for d in self.input["shape_signature"])

    def ops(self):
        """Names of the operators in the file (e.g. to check that no Flex op slipped in), whichever delegate runs
        them."""
        return tflite_op_names(self.path)

    def _prepared(self, image):
        """``image`` as a normalised float32 ``[1, H, W, 3]`` of a size this model takes, or a ValueError."""
        image = np.asarray(image)
        given_shape = image.shape
        if image.dtype != np.uint8 and image.dtype.kind != "f":
            raise ValueError(f"{self.path}: image of dtype {image.dtype}; pass uint8 RGB (normalised here) or float32 "
                             "normalised with gsto_tf.data.normalize_image")
        if image.ndim == 3:
            image = image[None]
        # Shape first: normalisation would broadcast a 1-channel image to 3 channels and pass.
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3:
            raise ValueError(f"{self.path}: input of shape {given_shape}; pass one RGB image [H, W, 3] or "
                             "a batch of one [1, H, W, 3]")
        if image.dtype == np.uint8:
            image = np.asarray(normalize_image(image))
        image = image.astype(np.float32, copy=False)
        if 0 in image.shape:
            raise ValueError(f"{self.path}: empty image of shape {image.shape}")
        if not np.all(np.abs(image) <= NORMALIZED_LIMIT):  # NaN fails the comparison too
            raise ValueError(f"{self.path}: a float image must be normalised (values within +-{NORMALIZED_LIMIT:g}); "
                             "this one holds NaN, Inf or larger values: pass 0-255 pixels as uint8 (normalised here)")
        if self.dynamic and image.shape[1] * image.shape[2] > self.max_pixels:
            raise ValueError(f"{self.path}: a {image.shape[1]}x{image.shape[2]} image is more than max_pixels="
                             f"{self.max_pixels} for this dynamic-size model (memory grows with the image: 3000x3000 "
                             "takes about 6 GiB); resize it, or raise max_pixels")
        (_, h, w, _), (_, got_h, got_w, _) = self.input_shape, image.shape
        if (h is not None and h != got_h) or (w is not None and w != got_w):
            raise ValueError(f"{self.path}: this TFLite model was exported for {h}x{w} images, got {got_h}x{got_w}; "
                             f"resize the image to {h}x{w} first (gsto_tf.layers.resize_bilinear), or export a "
                             "dynamic-size model (--input-size dynamic)")
        return image

    def __call__(self, image):
        image = self._prepared(image)
        if self.dynamic and tuple(self.interpreter.get_input_details()[0]["shape"]) != image.shape:
            self.interpreter.resize_tensor_input(self.input["index"], list(image.shape))
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input["index"], image)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


# The argmax agreement a quantisation mode keeps on a trained model (docs/export.md measures each; the slow export
# test checks int8, fp16 and fp32 on the main job's model). Below it, the report says why that may be.
AGREEMENT_BOUNDS = {"none": 0.999, "fp16": 0.995, "dynamic": 0.99, "int8": 0.97}


@dataclasses.dataclass
class ParityReport:
    quantize: str
    images: int
    max_abs_diff: float
    logits_std: float
    argmax_agreement: float
    # Pixels whose two highest reference logits are closer than max_abs_diff: the quantisation error alone can flip
    # their argmax (many such pixels: the model is undertrained, its classes barely separated).
    close_call_fraction: float = 0.0

    @property
    def relative_max_diff(self):
        return self.max_abs_diff / self.logits_std

    @property
    def bound(self):
        return AGREEMENT_BOUNDS[self.quantize]

    @property
    def below_bound(self):
        return self.argmax_agreement < self.bound

    def __str__(self):
        text = (f"TFLite parity ({self.quantize}) on {self.images} images: max|d logits| = {self.max_abs_diff:.3g} "
                f"({self.relative_max_diff:.2e} x std(logits)), argmax agreement = {100 * self.argmax_agreement:.2f}%")
        if self.below_bound:
            text += (f"\nWARNING: argmax agreement is below the {100 * self.bound:g} % that a trained model keeps with "
                     f"--quantize {self.quantize} (docs/export.md). {100 * self.close_call_fraction:.1f} % of the "
                     "pixels have their two highest logits closer than the quantisation error: the more there are, "
                     "the less trained the model (a barely trained one cannot keep its argmax)")
            if self.quantize == "int8":
                text += (f"; calibrating on {self.images} images may also be too few (--num-images, at least 8 of the "
                         "dataset's own photographs)")
            text += "."
        return text


def parity_report(model, runner, images, quantize="none"):
    """Compare the Keras model and a TFLite runner on normalised images [H, W, 3]."""
    infer = inference_model(model, fold_batch_norm=False)  # the reference: the model as trained
    diffs, refs, gaps, agree, total = [], [], [], 0, 0
    for image in images:
        ref = np.asarray(infer(np.asarray(image, np.float32)[None], training=False), np.float32)
        got = runner(image)
        diffs.append(np.abs(ref - got).max())
        refs.append(ref)
        top_two = np.sort(ref, axis=-1)[..., -2:]
        gaps.append((top_two[..., 1] - top_two[..., 0]).ravel())
        agree += int(np.sum(ref.argmax(-1) == got.argmax(-1)))
        total += ref[..., 0].size
    # float64: the logits of a barely trained model can exceed sqrt(float32 max), and their square overflows.
    std = float(np.std(np.concatenate([r.ravel() for r in refs]), dtype=np.float64))
    max_diff = float(max(diffs))
    close = float(np.mean(np.concatenate(gaps) < max_diff)) if refs[0].shape[-1] > 1 else 0.0
    return ParityReport(quantize, len(refs), max_diff, std, agree / total, close)
