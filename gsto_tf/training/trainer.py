"""Training with ``model.fit`` under a tf.distribute strategy, resumable, then evaluation."""

import dataclasses
import os
import time

import keras
import tensorflow as tf

from gsto_tf.data import build_eval_dataset, build_train_dataset, get_dataset_spec, list_samples, resolve_data_dir
from gsto_tf.data.decode import reading_data
from gsto_tf.evaluation import evaluate, test_setting
from gsto_tf.models import build, inference_model, load_torch_weights
from gsto_tf.models.outputs import loss_weight
from gsto_tf.training.callbacks import (
    LatestAndBestCheckpoint,
    LearningRateLogger,
    NaNGuard,
    ResumeCallback,
    ResumeState,
    copy_if_missing,
    save_model_atomically,
)
from gsto_tf.training.distribute import make_strategy
from gsto_tf.training.losses import CITYSCAPES_CLASS_WEIGHTS, SegmentationLoss
from gsto_tf.training.optimizer import TorchSGD, poly_schedule


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
        if spec.name != "cityscapes":
            raise ValueError("train.class_weights: class weights are defined for cityscapes only")
        weights = CITYSCAPES_CLASS_WEIGHTS
    return SegmentationLoss(spec.num_classes, spec.ignore_label, class_weights=weights, ohem=config.train.ohem,
                            ohem_thresh=config.train.ohem_thresh, ohem_min_kept=config.train.ohem_min_kept)


def evaluation_setting(config):
    setting = test_setting(config.data.dataset)
    return setting.single_scale() if config.eval.single_scale else setting


def train(config, run_dir, evaluate_at_end=True, verbose=1):
    """Train ``config`` (an :class:`~gsto_tf.training.config.ExperimentConfig`) in ``run_dir``; resumes from
    ``run_dir/backup`` when a previous run of the same command was interrupted."""
    start = time.time()
    spec = get_dataset_spec(config.data.dataset)
    data_dir = resolve_data_dir(spec.name, config.data.data_dir)
    samples = list_samples(spec.name, data_dir, "train")  # fails here, with the expected layout, if data is missing
    os.makedirs(run_dir, exist_ok=True)
    config.save(os.path.join(run_dir, "config.yaml"))

    keras.utils.set_random_seed(config.train.seed)
    if config.train.mixed_precision:
        keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)
    strategy = make_strategy(config.train.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.train.global_batch_size
    if global_batch % replicas:
        raise ValueError(f"train.global_batch_size={global_batch} is not divisible by {replicas} replicas")
    steps_per_epoch = len(samples) // global_batch
    if config.train.steps:
        total_steps = int(config.train.steps)
    elif config.train.epochs:
        total_steps = int(config.train.epochs) * steps_per_epoch
    else:
        raise ValueError("set train.steps or train.epochs")
    chunk = _chunking(total_steps, config.train.checkpoint_every)
    num_chunks = total_steps // chunk
    print(f"training {config.model.name} on {spec.name} ({len(samples)} images): {total_steps} steps, "
          f"global batch {global_batch} = {global_batch // replicas} per replica x {replicas} replica(s) "
          f"[{type(strategy).__name__}], backups every {chunk} steps")

    with strategy.scope():
        options = {"sync_batchnorm": replicas > 1}
        if config.model.gate_style is not None:
            options["gate_style"] = config.model.gate_style
        if config.model.gsto_parts is not None:
            options["gsto_parts"] = list(config.model.gsto_parts)
        model = build(config.model.name, spec.num_classes, **options)
        optimizer = TorchSGD(poly_schedule(config.train.lr, total_steps, config.train.lr_power),
                             momentum=config.train.momentum, weight_decay_l2=config.train.weight_decay)
        names = list(model.output)
        model.compile(optimizer=optimizer, loss={n: _loss_for(config, spec) for n in names},
                      loss_weights={n: loss_weight(n) for n in names}, jit_compile=False)
    if config.model.pretrained:
        report = load_torch_weights(model, config.model.pretrained, backbone_only=True)
        print(report.summary())

    state = ResumeState(os.path.join(run_dir, "backup"), model, optimizer)
    initial_chunk = state.restore(model, optimizer)
    if initial_chunk:
        print(f"resuming from step {initial_chunk * chunk} (backup in {run_dir}/backup)")

    ds = build_train_dataset(spec.name, data_dir, global_batch_size=global_batch, seed=config.train.seed,
                             crop_size=config.data.crop_size, scale_range=config.data.scale_range,
                             photometric=config.data.photometric, start_step=initial_chunk * chunk)
    ds = ds.map(lambda x, y: (x, {n: y for n in names}))

    setting = evaluation_setting(config)

    def run_eval(m):
        return evaluate(inference_model(m), build_eval_dataset(spec.name, data_dir), spec, setting=setting,
                        limit=config.eval.limit, progress=verbose > 0)

    nan_guard = NaNGuard(chunk, initial_chunk)
    checkpoints = os.path.join(run_dir, "checkpoints")
    callbacks = [
        nan_guard,
        LearningRateLogger(),
        ResumeCallback(state),
        LatestAndBestCheckpoint(checkpoints, run_eval, config.train.eval_every, os.path.join(run_dir, "logs")),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), update_freq="epoch", write_graph=False),
    ]
    history = None
    if initial_chunk < num_chunks:
        with reading_data():  # a bad file: one line naming it, not a graph-execution error
            history = model.fit(ds, epochs=num_chunks, steps_per_epoch=chunk, initial_epoch=initial_chunk,
                                shuffle=False, callbacks=callbacks, verbose=verbose)
    final_loss = float(history.history["loss"][-1]) if history and history.history.get("loss") else float("nan")
    if nan_guard.failed_step is not None:
        return TrainResult(run_dir, nan_guard.failed_step, final_loss, None, time.time() - start,
                           stopped_on_nan_at=nan_guard.failed_step)
    save_model_atomically(model, os.path.join(checkpoints, "final.keras"))
    metrics = None
    if evaluate_at_end:
        metrics = run_eval(model)
        metrics.save(os.path.join(run_dir, "eval"), "metrics")
        print(metrics.table())
        copy_if_missing(os.path.join(checkpoints, "final.keras"), os.path.join(checkpoints, "best.keras"))
        with tf.summary.create_file_writer(os.path.join(run_dir, "logs")).as_default():
            tf.summary.scalar("val_miou", metrics.miou, step=num_chunks)
    return TrainResult(run_dir, total_steps, final_loss, metrics, time.time() - start)
