"""Training with ``model.fit`` under a tf.distribute strategy, resumable, then evaluation.

With ``eval.precise_bn_batches = N > 0`` the BN statistics are re-estimated (PreciseBN,
:mod:`gsto_tf.training.precise_bn`) over N augmented training batches, the weights frozen: for each periodic
evaluation and its ``best.keras`` (then the training statistics are put back, so training and its resumable
backups never depend on evaluations), and once at the end, before ``final.keras`` is written and evaluated. The
batches are those that would follow the last training step in the training order (same seed and augmentation),
so a resumed run re-estimates from the same batches and ends with the same weights.
"""

import contextlib
import dataclasses
import os
import time

import keras
import tensorflow as tf

from gsto_tf.atomic import storage_errors
from gsto_tf.checkpoints import load_pretrained
from gsto_tf.data import (
    augmentation,
    build_eval_dataset,
    build_train_dataset,
    get_dataset_spec,
    list_samples,
    resolve_data_dir,
)
from gsto_tf.data.decode import reading_data
from gsto_tf.evaluation import evaluate, test_setting
from gsto_tf.keras_internals import build_compiled_loss
from gsto_tf.models import build, inference_model
from gsto_tf.models.outputs import loss_weight
from gsto_tf.training.callbacks import (
    HistoryLog,
    LatestAndBestCheckpoint,
    LearningRateLogger,
    NaNGuard,
    ProgressLog,
    ResumeCallback,
    ResumeState,
    keep_if_best,
    save_model_atomically,
)
from gsto_tf.training.config import ConfigError, validate_config
from gsto_tf.training.distribute import describe_strategy, make_strategy
from gsto_tf.training.losses import SegmentationLoss
from gsto_tf.training.optimizer import TorchSGD, poly_schedule
from gsto_tf.training.precise_bn import precise_bn, precise_bn_applied
from gsto_tf.training.run_dir import claim_run_dir
from gsto_tf.user_input import clip, shorten


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    steps: int
    final_loss: float
    metrics: object  # SegmentationMetrics of the final evaluation (None when skipped)
    seconds: float
    stopped_on_nan_at: int = None


def _chunking(total_steps, target):
    """Largest chunk <= target that divides total_steps (so resume points fall on chunk boundaries)."""
    target = max(1, min(target, total_steps))
    for chunk in range(target, 0, -1):
        if total_steps % chunk == 0:
            return chunk
    return 1


def _loss_for(config, spec):
    weights = None
    if config.train.class_weights:
        if spec.class_weights is None:
            raise ValueError(f"train.class_weights: the card of dataset '{spec.name}' has no class_weights "
                             "(`gsto-tf data stats` computes median-frequency weights for it)")
        weights = spec.class_weights
    return SegmentationLoss(spec.num_classes, spec.ignore_label, class_weights=weights, ohem=config.train.ohem,
                            ohem_thresh=config.train.ohem_thresh, ohem_min_kept=config.train.ohem_min_kept)


def evaluation_setting(config):
    setting = test_setting(config.data.dataset)
    return setting.single_scale() if config.eval.single_scale else setting


def build_model(config, num_classes, replicas=1):
    """``build(config.model.name, num_classes, **config.model.options)``, with synchronized BatchNorm when the
    batch is split over several replicas (call inside the strategy scope)."""
    options = dict(config.model.options)
    options.setdefault("sync_batchnorm", replicas > 1)
    return build(config.model.name, num_classes, **options)


def compile_model(model, config, spec, total_steps):
    """Compile ``model`` for training as the experiments do: one :class:`SegmentationLoss` per output, weighted as
    in :mod:`gsto_tf.models.outputs`, and :class:`TorchSGD` with the poly schedule over ``total_steps`` (HRNet's
    order: :class:`~gsto_tf.training.optimizer.PolyDecay`; ``train.lr_power=0`` gives a constant lr).

    A float64 model (``build(..., dtype="float64")``) trains in float64 only with ``keras.config.floatx()`` set to
    ``"float64"``: Keras' compiled loss casts every output's loss to floatx. Returns the model. Call inside the
    strategy scope.
    """
    if any(v.dtype == "float64" for v in model.trainable_weights) and keras.config.floatx() != "float64":
        raise ValueError(f"compile_model: model '{model.name}' has float64 weights but keras.config.floatx() is "
                         f"{keras.config.floatx()!r}; call keras.config.set_floatx('float64') before compiling, or "
                         "Keras casts its losses (and so the gradients) to float32")
    optimizer = TorchSGD(poly_schedule(config.train.lr, total_steps, config.train.lr_power),
                         momentum=config.train.momentum, weight_decay_l2=config.train.weight_decay)
    names = list(model.output)
    model.compile(optimizer=optimizer, loss={n: _loss_for(config, spec) for n in names},
                  loss_weights={n: loss_weight(n) for n in names}, jit_compile=False)
    # Built here, eagerly: built lazily inside the first traced step, the optimizer's slots and the per-output loss
    # trackers are variables created during a trace, which makes TensorFlow trace the whole training step twice
    # (and lift each slot's initialiser into the graph): the first step took twice as long.
    optimizer.build(model.trainable_variables)
    build_compiled_loss(model, {n: keras.KerasTensor((None, None, None), dtype="int32") for n in names})
    return model


def _total_steps(config, num_samples):
    if config.train.steps:
        return int(config.train.steps)
    if config.train.epochs:
        return int(config.train.epochs) * (num_samples // config.train.global_batch_size)
    raise ValueError("set train.steps or train.epochs")


def _callbacks(run_dir, state, nan_guard, run_eval, config, plan, initial_chunk, eval_context=None, verbose=1):
    # Order matters: the chunk-end callbacks write their files first; ResumeCallback, last, commits the chunk.
    # The learning rate and val_miou are in the logs before the progress line and the history row read them.
    chunk = plan.chunk
    progress = [ProgressLog(plan.total_steps, chunk, initial_chunk)] if verbose else []
    return [
        nan_guard,
        LearningRateLogger(),
        LatestAndBestCheckpoint(os.path.join(run_dir, "checkpoints"), state, run_eval, config.train.eval_every,
                                os.path.join(run_dir, "logs"), eval_context=eval_context),
        *progress,
        HistoryLog(os.path.join(run_dir, "history.csv"), chunk, initial_chunk),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), update_freq="epoch", write_graph=False),
        ResumeCallback(state),
    ]


def _finish(model, run_dir, run_eval, evaluate_at_end, num_chunks, state, before_save=None):
    """``before_save(model)`` (PreciseBN), then write ``final.keras``; evaluate, save the metrics, and keep the final
    model as ``best.keras`` when it beats the best periodic evaluation (or none was made)."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    if before_save is not None:
        before_save(model)
    save_model_atomically(model, os.path.join(checkpoints, "final.keras"))
    if not evaluate_at_end:
        return None
    metrics = run_eval(model)
    metrics.save(os.path.join(run_dir, "eval"), "metrics")
    print(metrics.table())
    keep_if_best(model, metrics.miou, state, os.path.join(checkpoints, "best.keras"))
    with tf.summary.create_file_writer(os.path.join(run_dir, "logs")).as_default():
        tf.summary.scalar("val_miou", metrics.miou, step=num_chunks)
    return metrics


@dataclasses.dataclass
class _Plan:
    """What a run does, fixed before anything is built: data, strategy, steps and their chunking."""

    spec: object
    data_dir: str
    samples: list  # the (image, label) files of the training split
    strategy: object
    total_steps: int
    chunk: int

    @property
    def num_chunks(self):
        return self.total_steps // self.chunk


def _plan(config, run_dir, evaluates):
    """Check the configuration and the data; seed, dtype policy and strategy. Writes nothing."""
    validate_config(config)
    spec = get_dataset_spec(config.data.dataset)
    # The saved config.yaml shows the augmentation the run uses, not nulls that mean "the card's or the default".
    crop, scales, base = augmentation(spec, config.data.crop_size, config.data.scale_range, config.data.base_size)
    config.data.crop_size, config.data.scale_range = list(crop), list(scales)
    config.data.base_size = None if base is None else int(base)
    data_dir = resolve_data_dir(spec, config.data.data_dir)
    samples = list_samples(spec, data_dir, config.data.train_split)  # fails here, naming the layout, if data is missing
    if evaluates:  # a missing evaluation split fails before training, not after it
        list_samples(spec, data_dir, config.data.val_split)

    keras.utils.set_random_seed(config.train.seed)
    if config.train.mixed_precision:
        keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)
    strategy = make_strategy(config.train.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.train.global_batch_size
    if global_batch % replicas:
        raise ConfigError(f"train.global_batch_size={global_batch} is not divisible by {replicas} replicas")
    if len(samples) < global_batch:
        raise ConfigError(f"train.global_batch_size={global_batch} is more than the {len(samples)} training images of "
                          f"dataset '{spec.name}'")
    total_steps = _total_steps(config, len(samples))
    plan = _Plan(spec, data_dir, samples, strategy, total_steps,
                 _chunking(total_steps, config.train.checkpoint_every))
    print(f"training {config.model.name} on {spec.name} ({len(samples)} images): {total_steps} steps, "
          f"global batch {global_batch} = {global_batch // replicas} per replica x {replicas} replica(s) "
          f"[{describe_strategy(strategy)}], backups every {plan.chunk} steps")
    return plan


def _compiled_model(config, plan):
    """The compiled model (inside the strategy's scope), with the ``model.pretrained`` trunk loaded. Options the
    model's builder refuses (an unknown name, a wrong type) raise :class:`ConfigError` naming ``model.options``."""
    with plan.strategy.scope():
        try:
            model = build_model(config, plan.spec.num_classes, plan.strategy.num_replicas_in_sync)
        except (TypeError, ValueError) as exc:
            options = ", ".join(f"{k}={shorten(v)}" for k, v in config.model.options.items()) or "none"
            raise ConfigError(f"model.options ({options}) refused by model '{config.model.name}': "
                              f"{clip(exc)}") from None
        model = compile_model(model, config, plan.spec, plan.total_steps)
    if config.model.pretrained:
        print(load_pretrained(model, config.model.pretrained))
    return model


def _train_batches(config, plan, start_step):
    return build_train_dataset(plan.spec, plan.data_dir, global_batch_size=config.train.global_batch_size,
                               seed=config.train.seed, crop_size=config.data.crop_size,
                               scale_range=config.data.scale_range, base_size=config.data.base_size,
                               photometric=config.data.photometric, start_step=start_step,
                               split=config.data.train_split)


def _evaluation(config, plan, verbose):
    """``(run_eval(model) -> metrics, eval_context or None, apply_precise_bn or None)`` (PreciseBN: module doc)."""
    setting = evaluation_setting(config)
    batches = config.eval.precise_bn_batches

    def run_eval(m):
        return evaluate(inference_model(m), build_eval_dataset(plan.spec, plan.data_dir, split=config.data.val_split), plan.spec,
                        setting=setting, limit=config.eval.limit, progress=verbose > 0)

    if not batches:
        return run_eval, None, None

    def after_training():  # the batches that would follow the last training step
        return _train_batches(config, plan, plan.total_steps)

    @contextlib.contextmanager
    def eval_context(m):
        with precise_bn_applied(m, after_training(), batches, plan.strategy) as updated:
            print(f"\nPreciseBN: BN statistics of {updated} layers re-estimated over {batches} "
                  "training batches for this evaluation and best.keras")
            yield

    def apply_precise_bn(m):
        updated = precise_bn(m, after_training(), batches, plan.strategy)
        print(f"PreciseBN applied: BN statistics of {updated} layers re-estimated over {batches} "
              "augmented training batches (weights frozen); final.keras carries them")

    return run_eval, eval_context, apply_precise_bn


def train(config, run_dir, evaluate_at_end=True, verbose=1):
    """Train ``config`` (an :class:`~gsto_tf.training.config.ExperimentConfig`) in ``run_dir``; resumes from
    ``run_dir/backup`` when a previous run of the same configuration was interrupted.

    An existing ``run_dir`` must hold a run of the same configuration (see :func:`~gsto_tf.training.run_dir.
    claim_run_dir`); a different one is refused before anything is written.
    """
    start = time.time()
    plan = _plan(config, run_dir, evaluate_at_end or config.train.eval_every > 0)
    model = _compiled_model(config, plan)
    # Claimed last: nothing is written for a run that cannot start (bad data, options the model refuses).
    with claim_run_dir(run_dir, config):
        return _train(config, run_dir, plan, model, start, evaluate_at_end, verbose)


# Folders TensorFlow would create itself with mode 0755 whatever the umask (its mkdir passes 0755); made here first
# so that they get the umask's mode like every other folder of the run (group-writable under umask 002).
_TF_MADE_FOLDERS = ("backup", "checkpoints", "logs", os.path.join("logs", "train"))


def _train(config, run_dir, plan, model, start, evaluate_at_end, verbose):
    with storage_errors(f"--run-dir {run_dir}"):
        for folder in _TF_MADE_FOLDERS:
            os.makedirs(os.path.join(run_dir, folder), exist_ok=True)
    chunk, num_chunks = plan.chunk, plan.num_chunks
    with plan.strategy.scope():  # restore() builds the optimizer's slots
        state = ResumeState(os.path.join(run_dir, "backup"), model, model.optimizer)
        initial_chunk = state.restore()
    if initial_chunk:
        print(f"resuming from step {initial_chunk * chunk} (backup in {run_dir}/backup)")
    run_eval, eval_context, apply_precise_bn = _evaluation(config, plan, verbose)

    nan_guard = NaNGuard(chunk, initial_chunk)
    history = None
    if initial_chunk < num_chunks:
        names = list(model.output)
        ds = _train_batches(config, plan, initial_chunk * chunk).map(lambda x, y: (x, {n: y for n in names}))
        # ProgressLog replaces Keras' progress bar, whose ETA after step 1 counted the graph tracing.
        callbacks = _callbacks(run_dir, state, nan_guard, run_eval, config, plan, initial_chunk, eval_context,
                               verbose)
        # A bad file: one line naming it, not a graph-execution error (found by decoding the split file by file
        # when the decoder itself does not name it, e.g. a JPEG corrupted in the middle).
        with reading_data(plan.samples):
            history = model.fit(ds, epochs=num_chunks, steps_per_epoch=chunk, initial_epoch=initial_chunk,
                                shuffle=False, callbacks=callbacks, verbose=0)
    final_loss = float(history.history["loss"][-1]) if history and history.history.get("loss") else float("nan")
    if nan_guard.failed_step is not None:
        return TrainResult(run_dir, nan_guard.failed_step, final_loss, None, time.time() - start,
                           stopped_on_nan_at=nan_guard.failed_step)
    metrics = _finish(model, run_dir, run_eval, evaluate_at_end, num_chunks, state, apply_precise_bn)
    return TrainResult(run_dir, plan.total_steps, final_loss, metrics, time.time() - start)
