"""gsto_tf.visualize."""
