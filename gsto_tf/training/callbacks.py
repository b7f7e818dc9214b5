"""Callbacks that make runs survive: exact resume, atomic latest/best checkpoints, NaN guard, lr logging.

A run is trained in chunks (one Keras "epoch" each). At the end of a chunk the callbacks run in this order:
``latest.keras``; every ``eval_every`` chunks an evaluation and ``best.keras`` when it beats the best so far; the
``history.csv`` row; last, the resumable backup, which *commits* the chunk. A run killed anywhere restarts at the
last committed chunk and redoes the rest exactly (same batches, same weights), so nothing is lost or counted
twice. A chunk that ended because training stopped (a non-finite loss) is not committed.
"""

import contextlib
import csv
import io
import math
import os
import shutil
import sys
import time

import keras
import tensorflow as tf

from gsto_tf.atomic import save_model_atomically, storage_errors, write_atomically


class ResumeState:
    """Every variable of the model (BN statistics and dropout seed states included) and of the optimizer, the
    completed-chunk counter and the best validation mIoU, in a tf.train.Checkpoint.

    The variables are listed in their Keras order rather than reached through ``model=model``: TensorFlow's object
    graph does not see sub-layers that Keras layers keep in Python lists (measured with Keras 3.15: 140 of the 363
    variables of hrnetv2_w18_small_v1 are missing from it; the trainable ones were saved only through the optimizer,
    the BN statistics not at all). Positions, not names, key them: Keras makes names unique per process
    (``sgd_1``), and :func:`~gsto_tf.training.run_dir.claim_run_dir` guarantees the same model.

    Training runs in chunks of ``checkpoint_every`` steps (Keras "epochs"); the state is saved at each chunk end,
    so a killed run restarts at the last chunk boundary with the same variables, optimizer slots, iteration count,
    best-so-far metric and — through the step-indexed data pipeline — the same next batches: kill + rerun ends
    bit-identical to an uninterrupted run. Create and :meth:`restore` it inside the strategy's scope (it builds the
    optimizer, whose slots must exist to be saved or restored).
    """

    FORMAT = 2  # 1: model=/optimizer= object graphs (missed the variables of listed sub-layers)

    def __init__(self, directory, model, optimizer):
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        self.chunk = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_chunks")
        # -1: no evaluation yet. Restored on resume, so best.keras is only ever replaced by a better model.
        self.best_miou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_miou")
        self.format = tf.Variable(self.FORMAT, dtype=tf.int64, trainable=False, name="backup_format")
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            self.optimizer.build(self.model.trainable_variables)
            metric_ids = {id(v) for v in self.model.metrics_variables}  # reset every chunk; created by fit
            model_variables = [v for v in self.model.variables if id(v) not in metric_ids]
            checkpoint = tf.train.Checkpoint(model_variables=model_variables,
                                             optimizer_variables=list(self.optimizer.variables),
                                             completed_chunks=self.chunk, best_miou=self.best_miou,
                                             backup_format=self.format)
            self._manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=2)
        return self._manager

    def restore(self):
        """Restore the latest state; returns the number of completed chunks (0 for a fresh run).

        Also deletes what a save killed half-way left behind (TensorFlow writes ``ckpt-N_temp*`` folders first).
        Raises ``ValueError`` for a backup written by an older gsto_tf, which cannot resume exactly.
        """
        self.remove_partial_saves()
        latest = self.manager.latest_checkpoint
        if not latest:
            return 0
        if not any(name.startswith("backup_format") for name, _ in tf.train.list_variables(latest)):
            raise ValueError(f"{self.directory}: this resumable backup was written by an older gsto_tf that did not "
                             "save every BatchNorm statistic, so it cannot resume exactly; delete the backup folder "
                             "to restart the run from step 0, or train into a new --run-dir")
        self.manager.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.chunk.numpy())

    def remove_partial_saves(self):
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if "_temp" in name and name.startswith("ckpt-") and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)

    def save(self, completed_chunks):
        self.chunk.assign(completed_chunks)
        try:
            with storage_errors(f"the resumable backup in {self.directory}"):
                self.manager.save()
        except Exception:
            self.remove_partial_saves()
            raise


class ResumeCallback(keras.callbacks.Callback):
    """Commits a chunk (saves the resumable state); the last of the chunk-end callbacks."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training:
            self.state.save(epoch + 1)


class HistoryLog(keras.callbacks.Callback):
    """``history.csv``: one row per committed chunk (``chunk``, ``step``, the logs), across resumes.

    Keras' CSVLogger fixes its columns at the first epoch (dropping a ``val_miou`` that appears later) and appends
    the rows of chunks a resumed run redoes a second time. Here rows of chunks that will be redone are dropped at
    start, columns are the union of all logs, and the file is rewritten atomically at each chunk end.
    """

    def __init__(self, path, steps_per_chunk, initial_chunk=0):
        super().__init__()
        self.path = path
        self.steps_per_chunk = steps_per_chunk
        self.rows = [r for r in self._read(path) if int(r["chunk"]) <= initial_chunk]

    @staticmethod
    def _read(path):
        if not os.path.isfile(path):
            return []
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if row.get("chunk", "").isdigit()]

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return
        row = {"chunk": epoch + 1, "step": (epoch + 1) * self.steps_per_chunk}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                f.write(text.getvalue())

        write_atomically(self.path, write)


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


class ProgressLog(keras.callbacks.Callback):
    """Progress of the whole run: one line per chunk, and a line updated in place after every step on a terminal.

    The rate is measured from the end of this process's first step, because that step also traces the training
    graph (tens of seconds, paid again by every resume): timed with it, the ETA after step 1 read as minutes or
    hours. Until a second step has ended there is no ETA, and the line says why. ``clock`` is for tests.
    """

    def __init__(self, total_steps, steps_per_chunk, initial_chunk=0, stream=None, clock=time.monotonic):
        super().__init__()
        self.total_steps = int(total_steps)
        self.steps_per_chunk = int(steps_per_chunk)
        self.epoch = int(initial_chunk)
        self.stream = stream if stream is not None else sys.stdout
        # On a terminal the line is rewritten in place after every step; elsewhere (a log file) once per chunk.
        self.terminal = getattr(self.stream, "isatty", lambda: False)()
        self.clock = clock
        self._start = self._first_end = self._first_step = None

    def on_train_begin(self, logs=None):
        self._start = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.steps_per_chunk + batch + 1
        if self._first_end is None:
            self._first_end, self._first_step = self.clock(), step
        if self.terminal:
            self._write(self.line(step, logs), end="")

    def on_epoch_end(self, epoch, logs=None):
        self._write(self.line((epoch + 1) * self.steps_per_chunk, logs), end="\n")

    def _write(self, line, end):
        # "\r" returns to the start of the line a step wrote, "\033[K" clears what a longer one left behind.
        self.stream.write(f"\r{line}\033[K{end}" if self.terminal else line + end)
        self.stream.flush()

    def seconds_per_step(self, step):
        """Mean time of the steps after this process's first one; None before a second step has ended."""
        if self._first_end is None or step <= self._first_step:
            return None
        return (self.clock() - self._first_end) / (step - self._first_step)

    def line(self, step, logs=None):
        parts = [f"step {step}/{self.total_steps}"]
        for key, value in (logs or {}).items():
            if hasattr(value, "__float__"):  # numbers, numpy scalars
                parts.append(f"{key} {float(value):.4g}")
        rate = self.seconds_per_step(step)
        if rate is None:
            first = self._first_end - self._start if self._first_end is not None and self._start is not None else 0
            parts.append(f"first step {first:.0f} s (it traces the training graph); ETA from the next step")
        else:
            parts.append(f"{rate:.3g} s/step")
            if step < self.total_steps:
                parts.append(f"ETA {_duration(rate * (self.total_steps - step))}")
        return "  ".join(parts)


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the logs (progress bar, CSV, TensorBoard)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class LatestAndBestCheckpoint(keras.callbacks.Callback):
    """``latest.keras`` after every chunk; every ``eval_every`` chunks an evaluation and ``best.keras``.

    The best-so-far mIoU lives in ``state.best_miou`` (a :class:`ResumeState`), so it survives a resume.
    ``eval_context``: optional ``model -> context manager`` entered around each evaluation and its ``best.keras``
    save (PreciseBN: :func:`gsto_tf.training.precise_bn.precise_bn_applied` re-estimates the BN statistics for them
    and restores the training ones afterwards, so training and its backups do not depend on evaluations).
    """

    def __init__(self, directory, state, evaluate_fn=None, eval_every=0, writer_dir=None, eval_context=None):
        super().__init__()
        self.directory = directory
        self.state = state
        self.evaluate_fn = evaluate_fn
        self.eval_every = eval_every
        self.eval_context = eval_context
        self.writer = tf.summary.create_file_writer(writer_dir) if writer_dir else None

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return
        save_model_atomically(self.model, os.path.join(self.directory, "latest.keras"))
        if self.evaluate_fn is not None and self.eval_every and (epoch + 1) % self.eval_every == 0:
            with self.eval_context(self.model) if self.eval_context else contextlib.nullcontext():
                metrics = self.evaluate_fn(self.model)
                keep_if_best(self.model, metrics.miou, self.state, os.path.join(self.directory, "best.keras"))
            if logs is not None:
                logs["val_miou"] = metrics.miou
            if self.writer is not None:
                with self.writer.as_default():
                    tf.summary.scalar("val_miou", metrics.miou, step=epoch + 1)


def keep_if_best(model, miou, state, path):
    """Save ``model`` to ``path`` when ``miou`` beats ``state.best_miou`` (or no best file exists yet)."""
    if miou > float(state.best_miou.numpy()) or not os.path.exists(path):
        save_model_atomically(model, path)
        state.best_miou.assign(max(miou, float(state.best_miou.numpy())))
        return True
    return False
