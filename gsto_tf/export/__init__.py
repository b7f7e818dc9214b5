"""gsto_tf.export."""
