"""gsto_tf: the Gated Scale-Transfer Operation (GSTO) and GSTO-HRNet in TensorFlow / Keras 3."""

__version__ = "0.1.0"
