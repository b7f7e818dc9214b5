"""Export to SavedModel (serving signatures) and TFLite (LiteRT), with parity reports."""

from gsto_tf.export.saved_model import DEFAULT_MAX_PIXELS, SegmentationServingModule, export_saved_model
from gsto_tf.export.tflite import (
    QUANTIZE_MODES,
    ParityReport,
    TFLiteRunner,
    convert_to_tflite,
    export_tflite,
    parity_report,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ParityReport",
    "QUANTIZE_MODES",
    "SegmentationServingModule",
    "TFLiteRunner",
    "convert_to_tflite",
    "export_saved_model",
    "export_tflite",
    "parity_report",
]
