"""gsto_tf.evaluation."""
