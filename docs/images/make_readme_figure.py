#!/usr/bin/env python
"""The README figure: predictions and three gate maps of a GSTO-HRNet on validation images of a dataset.

    python experiments/study_camvid.py --data-dir /data/CamVid --out runs/study_camvid   # real photographs
    python docs/images/make_readme_figure.py --dataset camvid --data-dir /data/CamVid \
        --checkpoint runs/study_camvid/gsto_hrnet_seed0/checkpoints/final.keras --output docs/images/camvid_gates.png

    .venv/bin/gsto-tf --run-dir runs/main                      # the Quick start's main job
    python docs/images/make_readme_figure.py --checkpoint runs/main/checkpoints/final.keras

Writes docs/images/gsto_gates.png by default (kept under 300 KB: small panels, 100 dpi).
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gsto_tf.atomic import write_atomically  # noqa: E402
from gsto_tf.data import build_eval_dataset, get_dataset_spec, resolve_data_dir  # noqa: E402
from gsto_tf.data.normalization import denormalize_image  # noqa: E402
from gsto_tf.evaluation.inference import Predictor  # noqa: E402
from gsto_tf.visualize.colors import colorize  # noqa: E402
from gsto_tf.visualize.figures import gate_value_range  # noqa: E402
from gsto_tf.evaluation.settings import test_setting  # noqa: E402
from gsto_tf.models import gate_model, inference_model# noqa: E402
from gsto_tf.checkpoints import load_checkpoint  # noqa: E402

# (gate layer, panel title): a stride-4 -> stride-16 fusion gate, the gate on the stride-4 branch's own map where
# the branches are fused, and a class-map transition gate.
GATES = (("stage3.0.att_layers.2.0", "fusion gate\nstride 4 -> 16"),
         ("stage4.0.att_layers.0.0", "fusion gate\nstride-4 branch, own map"),
         ("att2.2", "transition gate\n(from class map)"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="synthetic", help="built-in name or card file (default: synthetic)")
    parser.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    parser.add_argument("--indices", type=int, nargs="+", default=[3, 0], help="validation images (rows)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "gsto_gates.png"))
    args = parser.parse_args(argv)

    spec = get_dataset_spec(args.dataset)
    model, _ = load_checkpoint(args.checkpoint, num_classes=spec.num_classes)
    predictor = Predictor.from_setting(inference_model(model), test_setting(spec).single_scale(),
                                       spec.flip_pairs)
    gates = gate_model(model)
    samples = list(build_eval_dataset(spec, resolve_data_dir(spec, args.data_dir)).take(max(args.indices) + 1))

    cols = 3 + len(GATES)
    fig, axes = plt.subplots(len(args.indices), cols, figsize=(2.3 * cols, 1.2 * len(args.indices) + 0.8),
                             squeeze=False)
    for row, index in enumerate(args.indices):
        image, label = samples[index]["image"].numpy(), samples[index]["label"].numpy()
        maps = gates(image[None])
        panels = [(denormalize_image(image), "image\n", {}),
                  (colorize(label, spec.palette, spec.ignore_label), "ground truth\n", {}),
                  (colorize(predictor.predict(image).numpy(), spec.palette, spec.ignore_label), "prediction\n", {})]
        maps = {name: np.asarray(maps[name], np.float32) for name, _ in GATES}  # bfloat16 maps do not draw
        low, high = gate_value_range(list(maps.values()))
        panels += [(maps[name][0, ..., 0], title, {"cmap": "magma", "vmin": low, "vmax": high})
                   for name, title in GATES]
        for ax, (img, title, style) in zip(axes[row], panels):
            shown = ax.imshow(img, **style)
            if row == 0:
                ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.colorbar(shown, ax=axes[:, 3:].ravel().tolist(), shrink=0.8, label="gate value")
    handles = [matplotlib.patches.Patch(color=np.asarray(c) / 255.0, label=n)
               for n, c in zip(spec.class_names, spec.palette)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02 * (len(handles) // 7)))
    try:
        write_atomically(args.output, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KB)")


if __name__ == "__main__":
    main()
