"""gsto_tf.training."""
