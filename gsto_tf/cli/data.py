"""`gsto-tf data verify|stats|browse|prepare`: check a dataset on disk, class statistics and weights, look at
augmented samples, convert formats."""

import math

import numpy as np

from gsto_tf.images import save_png
from gsto_tf.cli.common import add_dataset_argument, dataset_spec
from gsto_tf.user_input import int_in, parse_size
from gsto_tf.data import resolve_data_dir

# One PNG grid of this many crops is already large (64 crops of 512x1024 are a 16-megapixel image).
MAX_BROWSE_SAMPLES = 64


def add_arguments(parser):
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                                help="verify, stats, browse or prepare")
    verify = sub.add_parser("verify", help="check every file of each split; report bad files and counts")
    add_dataset_argument(verify)
    verify.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    verify.add_argument("--split", action="append", help="split(s) to check (default: train and val)")
    verify.add_argument("--limit", type=int_in(1, 10**9), help="check only the first N samples of each split")
    stats = sub.add_parser("stats", help="class pixel frequencies and median-frequency class weights of a split")
    add_dataset_argument(stats)
    stats.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    stats.add_argument("--split", default="train", help="split to count (default: train)")
    stats.add_argument("--limit", type=int_in(1, 10**9), help="count only the first N samples")
    browse = sub.add_parser("browse", help="write a PNG grid of augmented training samples with label overlays")
    add_dataset_argument(browse)
    browse.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    browse.add_argument("--split", default="train", help="split to sample (default: train)")
    browse.add_argument("--num", type=int_in(1, MAX_BROWSE_SAMPLES), default=8,
                        help=f"number of samples (1..{MAX_BROWSE_SAMPLES}; default: 8)")
    browse.add_argument("--seed", type=int, default=0, help="augmentation seed (the same seed shows the same crops)")
    browse.add_argument("--crop-size", type=parse_size, help="HxW (default: the dataset's)")
    browse.add_argument("--photometric", action="store_true", help="also apply the photometric augmentation")
    browse.add_argument("--output", default="data_browse.png", help="PNG path (default: data_browse.png)")
    prepare = sub.add_parser("prepare", help="convert PASCAL-Context .mat files into the PNG layout (once)")
    prepare.add_argument("--dataset", default="pascal_context", choices=["pascal_context", "pascal_context_60"],
                         help="the 59- or 60-class labels (default: pascal_context, 59 classes)")
    prepare.add_argument("--data-dir", required=True, help="folder holding VOC2010/ (PNGs are written there)")
    prepare.add_argument("--mat-dir", required=True, help="folder of the original {id}.mat files (trainval/)")
    prepare.add_argument("--overwrite", action="store_true", help="replace PNGs that exist already")


def _verify(args):
    from gsto_tf.data.verify import verify_dataset

    spec = dataset_spec(args.dataset)
    data_dir = resolve_data_dir(spec, args.data_dir)
    reports = verify_dataset(spec, data_dir, args.split, args.limit, progress=print)
    bad = 0
    for r in reports:
        print(f"{spec.name} {r.split}: {r.found} samples, {len(r.problems)} bad")
        if r.count_differs:
            print(f"  note: the published {r.split} split has {r.expected} samples (fine for a subset, a generated "
                  "set or another release)")
        for path, what in r.problems:
            print(f"  BAD {path}: {what}")
        bad += len(r.problems)
    print("OK" if bad == 0 else f"FAILED: {bad} bad file(s)")
    return 0 if bad == 0 else 1


def _stats(args):
    from gsto_tf.data.stats import class_stats

    spec = dataset_spec(args.dataset)
    stats = class_stats(spec, resolve_data_dir(spec, args.data_dir), args.split, args.limit)
    print(f"{spec.name} {args.split}:")
    print(stats.table())
    return 0


def overlay_grid(images, labels, spec, columns=4, alpha=0.5):
    """uint8 grid: each sample as [image | image blended with the palette-coloured label] (the overlay of
    ``predict``: ignore pixels are blended with black)."""
    from gsto_tf.data import denormalize_image
    from gsto_tf.visualize.colors import overlay

    tiles = []
    for image, label in zip(images, labels):
        rgb = denormalize_image(image)
        blend = overlay(rgb, label, spec.palette, alpha, spec.ignore_label)
        tiles.append(np.concatenate([rgb, np.full((rgb.shape[0], 2, 3), 255, np.uint8), blend], 1))
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles[0].shape[:2]
    grid = np.full((rows * (h + 4), columns * (w + 4), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 4):r * (h + 4) + h, c * (w + 4):c * (w + 4) + w] = tile
    return grid


def _browse(args):
    from gsto_tf.data import build_train_dataset
    from gsto_tf.data.decode import read_checked

    spec = dataset_spec(args.dataset)
    ds = build_train_dataset(spec, args.data_dir, global_batch_size=1, seed=args.seed, crop_size=args.crop_size,
                             split=args.split, photometric=args.photometric)
    images, labels = [], []
    for x, y in read_checked(ds.take(args.num)):  # a bad file: one line naming it
        images.append(x.numpy()[0])
        labels.append(y.numpy()[0])
    grid = overlay_grid(images, labels, spec, columns=min(4, args.num))
    save_png(args.output, grid)
    print(f"wrote {args.output} ({args.num} augmented {spec.name} samples: image | label overlay)")
    return 0


def _prepare(args):
    from gsto_tf.data.pascal_context_mat import prepare_pascal_context

    counts = prepare_pascal_context(args.mat_dir, args.data_dir, overwrite=args.overwrite)
    print(f"PASCAL-Context PNG layout ready under {args.data_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def main(args):
    return {"verify": _verify, "stats": _stats, "browse": _browse, "prepare": _prepare}[args.data_command](args)
