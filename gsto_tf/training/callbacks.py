"""Callbacks that make runs survive: exact resume, atomic latest/best checkpoints, NaN guard, lr logging."""

import math
import os
import shutil

import keras
import tensorflow as tf

from gsto_tf.atomic import save_model_atomically, write_atomically


class ResumeState:
    """Model + optimizer + completed-chunk counter in a tf.train.Checkpoint (written atomically by TF).

    Training runs in chunks of ``checkpoint_every`` steps (Keras "epochs"); the state is saved at each chunk end,
    so a killed run restarts at the last chunk boundary with the same weights, optimizer slots, iteration count
    and — through the step-indexed data pipeline — the same next batches.
    """

    def __init__(self, directory, model, optimizer):
        self.chunk = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_chunks")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, completed_chunks=self.chunk)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def restore(self, model, optimizer):
        """Restore the latest state; returns the number of completed chunks (0 for a fresh run)."""
        if not self.manager.latest_checkpoint:
            return 0
        optimizer.build(model.trainable_variables)
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.chunk.numpy())

    def save(self, completed_chunks):
        self.chunk.assign(completed_chunks)
        self.manager.save()


class ResumeCallback(keras.callbacks.Callback):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.save(epoch + 1)


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first non-finite loss, naming the global step."""

    def __init__(self, steps_per_chunk, initial_chunk=0):
        super().__init__()
        self.steps_per_chunk = steps_per_chunk
        self.epoch = initial_chunk
        self.failed_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_step = self.epoch * self.steps_per_chunk + batch + 1
            print(f"\nloss is {float(loss)} at step {self.failed_step}: stopping the run (lower the learning "
                  "rate, check the data, or use float32).")
            self.model.stop_training = True


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the logs (progress bar, CSV, TensorBoard)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class LatestAndBestCheckpoint(keras.callbacks.Callback):
    """``latest.keras`` after every chunk; every ``eval_every`` chunks an evaluation and ``best.keras``."""

    def __init__(self, directory, evaluate_fn=None, eval_every=0, writer_dir=None):
        super().__init__()
        self.directory = directory
        self.evaluate_fn = evaluate_fn
        self.eval_every = eval_every
        self.best = -1.0
        self.writer = tf.summary.create_file_writer(writer_dir) if writer_dir else None

    def on_epoch_end(self, epoch, logs=None):
        save_model_atomically(self.model, os.path.join(self.directory, "latest.keras"))
        if self.evaluate_fn is not None and self.eval_every and (epoch + 1) % self.eval_every == 0:
            metrics = self.evaluate_fn(self.model)
            if logs is not None:
                logs["val_miou"] = metrics.miou
            if self.writer is not None:
                with self.writer.as_default():
                    tf.summary.scalar("val_miou", metrics.miou, step=epoch + 1)
            if metrics.miou > self.best:
                self.best = metrics.miou
                save_model_atomically(self.model, os.path.join(self.directory, "best.keras"))


def copy_if_missing(src, dst):
    if os.path.exists(src) and not os.path.exists(dst):
        write_atomically(dst, lambda tmp: shutil.copyfile(src, tmp))
