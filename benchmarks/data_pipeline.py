#!/usr/bin/env python
"""Training-pipeline throughput (images/s) vs what a w18_small_v2 training step consumes, on this machine.

Cases: Cityscapes-sized 1024x2048 PNGs (a few fake ones written in the real layout into a temp folder;
crop 512x1024, the Cityscapes recipe's scale range), the built-in synthetic set (its card's crop) and, with
``--camvid-dir``, real CamVid photographs at the camvid card's recipe (crop 360x480, batch 8, scales 0.5-2 of the
480-pixel side) as they lie there (JPEG) and re-encoded as PNG (the original download's format). For each the
full `build_train_dataset` pipeline (parallel decode, label mapping, random scale, pad, crop, flip, batch,
prefetch) is timed after a warm-up, and, when the model is available, one `hrnetv2_w18_small_v2` SGD step on the
same batch size. Target: pipeline >= 3x the model's images/s. Prints a table, writes benchmarks/results/
data_pipeline.csv.

    python benchmarks/data_pipeline.py [--batches 8] [--no-model] [--camvid-dir path/to/CamVid]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from gsto_tf.data import augmentation, build_train_dataset, ensure_synthetic, get_dataset_spec  # noqa: E402
from gsto_tf.data.synthetic import generate_sample  # noqa: E402
from gsto_tf.tables import write_csv  # noqa: E402


def write_fake_cityscapes(root, n=6):
    """n 1024x2048 images: synthetic scenes upscaled (so PNGs compress like real photos) plus sensor noise."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image, raw = generate_sample(np.random.default_rng([0, 9, i]), 128, 256)
        image = np.asarray(Image.fromarray(image).resize((2048, 1024), Image.BILINEAR), np.int16)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        raw = Image.fromarray(raw).resize((2048, 1024), Image.NEAREST)
        stem = f"bench_{i:06d}_000019"
        pairs = (("leftImg8bit", "leftImg8bit", Image.fromarray(image)), ("gtFine", "gtFine_labelIds", raw))
        for sub, suffix, im in pairs:
            folder = os.path.join(root, sub, "train", "bench")
            os.makedirs(folder, exist_ok=True)
            im.save(os.path.join(folder, f"{stem}_{suffix}.png"))
    return root


def camvid_as_png(camvid_dir, root, n=48):
    """The first ``n`` CamVid train pairs with the images re-encoded as PNG, in the same folders."""
    images = sorted(os.listdir(os.path.join(camvid_dir, "train")))[:n]
    for folder in ("train", "trainannot"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for name in images:
        stem = os.path.splitext(name)[0]
        Image.open(os.path.join(camvid_dir, "train", name)).save(os.path.join(root, "train", stem + ".png"))
        Image.open(os.path.join(camvid_dir, "trainannot", stem + ".png")).save(
            os.path.join(root, "trainannot", stem + ".png"))
    return root


def time_pipeline(name, root, batch, crop, batches):
    ds = build_train_dataset(name, root, global_batch_size=batch, seed=0, crop_size=crop)
    it = iter(ds)
    next(it)  # warm-up: tracing, thread pools
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
    x.numpy()
    return batches * batch / (time.perf_counter() - start)


def time_model_step(num_classes, batch, crop, steps):
    from gsto_tf.layers.resize import resize_bilinear
    from gsto_tf.models import build

    model = build("hrnetv2_w18_small_v2", num_classes, aux=False)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    x = tf.random.normal([batch, *crop, 3])
    y = tf.random.uniform([batch, *crop], 0, num_classes, tf.int32)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)["logits"]
            logits = resize_bilinear(logits, tf.shape(y)[1:3])
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step(x, y).numpy()  # trace + first step
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
    loss.numpy()
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per pipeline case")
    parser.add_argument("--model-steps", type=int, default=2)
    parser.add_argument("--no-model", action="store_true", help="pipeline figures only")
    parser.add_argument("--camvid-dir", help="CamVid root (train/, trainannot/): adds the real-photograph cases")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "data_pipeline.csv"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("cityscapes 1024x2048", "cityscapes", write_fake_cityscapes(os.path.join(tmp, "cs")), 2, (512, 1024)),
            ("synthetic", "synthetic", ensure_synthetic(os.path.join(tmp, "syn")), 8, augmentation("synthetic")[0]),
        ]
        if args.camvid_dir:
            batch = get_dataset_spec("camvid").recipe["train"]["global_batch_size"]
            cases += [("camvid jpeg 360x480", "camvid", args.camvid_dir, batch, augmentation("camvid")[0]),
                      ("camvid png 360x480", "camvid", camvid_as_png(args.camvid_dir, os.path.join(tmp, "cv")),
                       batch, augmentation("camvid")[0])]
        for label, name, root, batch, crop in cases:
            pipe = time_pipeline(name, root, batch, tuple(crop), args.batches)
            model = None
            if not args.no_model:
                try:
                    model = time_model_step(get_dataset_spec(name).num_classes, batch, tuple(crop), args.model_steps)
                except ImportError as exc:  # the model package may not exist in a partial checkout
                    print(f"model step not measured: {exc}")
            rows.append({"case": label, "crop": f"{crop[0]}x{crop[1]}", "batch": batch,
                         "pipeline_img_s": round(pipe, 2), "w18_small_v2_step_img_s": model and round(model, 2),
                         "ratio": model and round(pipe / model, 1), "target_ratio": 3,
                         "cpu_cores": os.cpu_count()})
    header = list(rows[0])
    print(" | ".join(f"{h:>22}" for h in header))
    for r in rows:
        print(" | ".join(f"{str(r[h]):>22}" for h in header))
    write_csv(rows, args.out, header)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
