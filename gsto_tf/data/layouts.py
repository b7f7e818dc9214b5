"""Finding the (image, label) files of a split on disk, by the card's ``layout``, with errors that show the expected
files.

``folders``: ``splits.<split>.images`` and ``.labels`` are folders under ``--data-dir`` (or lists of folders, taken
in pairs); an image (``.png/.jpg/.jpeg``) and its label (``.png``) share their stem. ``list``: ``splits.<split>.list`` is a text file
under ``--data-dir`` with one ``image_path label_path`` pair a line (paths relative to ``--data-dir``, quoted when they
hold spaces or ``#``; ``#`` starts a comment). ``cityscapes``, ``pascal_context``, ``lip``: the published folder structures of those datasets.
A folders or list split may keep only the images whose stem matches ``include`` and none of ``exclude``.
"""

import fnmatch
import glob
import os
import shlex

from gsto_tf.data.registry import CARDS_DIR, get_dataset_spec
from gsto_tf.user_input import not_utf8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIX = ".png"


class DatasetError(ValueError):
    """The data on disk is missing or does not match the expected layout."""


def _missing(spec, data_dir, what):
    where = "" if data_dir is None else f" {data_dir}"
    return DatasetError(
        f"dataset {describe(spec)}: {what}; expected under --data-dir{where}:\n  " + spec.layout_help.replace("\n", "\n  ")
        + (f"\nwhere to get it: {spec.source}" if spec.source else "")
    )


def describe(spec):
    """``'name'``, with the card file for a dataset that is not built in (errors name the card to fix)."""
    builtin = os.path.dirname(os.path.abspath(spec.card)) == os.path.abspath(CARDS_DIR)
    return f"'{spec.name}'" if builtin or not spec.card else f"'{spec.name}' (card {spec.card})"


def _split_entry(spec, root, split):
    entry = spec.split_entry(split)
    if entry is None:
        raise _missing(spec, root, f"no split '{split}' in its card (splits: {', '.join(spec.split_names)})")
    return entry


def _folders(spec, root, split):
    entry = _split_entry(spec, root, split)
    stems, samples = {}, []
    for images_part, labels_part in zip(entry["images"], entry["labels"]):
        image_dir, label_dir = os.path.join(root, images_part), os.path.join(root, labels_part)
        if not os.path.isdir(image_dir):
            raise _missing(spec, root, f"image folder of split '{split}' not found: {image_dir}")
        images = sorted(p for p in glob.glob(os.path.join(image_dir, "*")) if p.lower().endswith(IMAGE_SUFFIXES))
        labels = set(os.listdir(label_dir)) if os.path.isdir(label_dir) else set()
        for image in images:
            stem = _stem(image)
            if stem in stems:
                raise DatasetError(f"dataset {describe(spec)}: two images share the stem '{stem}' (their labels would "
                                   f"be one file): {stems[stem]} and {image}")
            stems[stem] = image
            # the label's suffix in either case, as images' (.PNG from cameras and Windows tools)
            label = next((stem + suffix for suffix in (LABEL_SUFFIX, LABEL_SUFFIX.upper()) if stem + suffix in labels),
                         stem + LABEL_SUFFIX)
            samples.append((image, os.path.join(label_dir, label)))
    return samples


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _filtered(entry, samples):
    """The samples whose image stem matches one of the split's ``include`` patterns (all when none) and none of its
    ``exclude`` patterns (shell wildcards, e.g. ``0006R0_*``: a hold-out split by video sequence)."""
    include, exclude = entry.get("include"), entry.get("exclude", ())

    def kept(stem):
        return ((include is None or any(fnmatch.fnmatchcase(stem, p) for p in include))
                and not any(fnmatch.fnmatchcase(stem, p) for p in exclude))

    return [s for s in samples if kept(_stem(s[0]))]


def _list(spec, root, split):
    entry = _split_entry(spec, root, split)
    list_file = os.path.join(root, entry["list"])
    if not os.path.isfile(list_file):
        raise _missing(spec, root, f"list file of split '{split}' not found: {list_file}")
    samples = []
    try:
        with open(list_file, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first path
            lines = f.readlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{list_file}: not UTF-8 text (byte {exc.start}); save the list as UTF-8") from None
    for number, line in enumerate(lines, 1):
        try:
            parts = _list_fields(line)
        except ValueError as exc:
            raise DatasetError(f"{list_file}, line {number}: {exc} in {line.strip()[:120]!r}") from None
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(f"{list_file}, line {number}: expected 'image_path label_path' (two paths "
                               f"separated by whitespace; quote a path that holds spaces or #), got "
                               f"{line.strip()[:120]!r}")
        samples.append(tuple(os.path.join(root, p) for p in parts))
    return samples


def _list_fields(line):
    """The fields of a list-file line: split at whitespace, "quoted" or 'quoted' fields may hold spaces and #, a #
    outside quotes starts a comment; backslashes are kept as they are (Windows-style paths)."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split, lexer.commenters, lexer.escape = True, "#", ""
    return list(lexer)


def _cityscapes(spec, root, split):
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise _missing(spec, root, f"folder not found: {image_dir}")
    images = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
    return [(image, cityscapes_ground_truth(image, "labelIds")) for image in images]


def cityscapes_ground_truth(image, kind):
    """The ground-truth file ``{root}/gtFine/{split}/{city}/{stem}_gtFine_{kind}.png`` of the image
    ``{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``."""
    city_dir = os.path.dirname(image)
    split_dir = os.path.dirname(city_dir)
    root = os.path.dirname(os.path.dirname(split_dir))
    stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
    return os.path.join(root, "gtFine", os.path.basename(split_dir), os.path.basename(city_dir),
                        f"{stem}_gtFine_{kind}.png")


def _pascal_context(spec, root, split):
    voc = root if os.path.basename(os.path.normpath(root)) == "VOC2010" else os.path.join(root, "VOC2010")
    list_file = os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise _missing(spec, root, f"split list not found: {list_file}")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    return [(os.path.join(voc, "JPEGImages", f"{i}.jpg"), os.path.join(voc, "SegmentationClassContext", f"{i}.png"))
            for i in ids]


def _lip(spec, root, split):
    image_dir = os.path.join(root, "TrainVal_images", f"{split}_images")
    label_dir = os.path.join(root, "TrainVal_parsing_annotations", f"{split}_segmentations")
    if not os.path.isdir(image_dir):
        raise _missing(spec, root, f"folder not found: {image_dir}")
    images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    return [(im, os.path.join(label_dir, os.path.basename(im)[:-4] + ".png")) for im in images]


# layout -> (reader, instance-id map of an image or None). Only the Cityscapes layout has instance maps
# (*_gtFine_instanceIds.png beside each label).
_LAYOUTS = {
    "folders": (_folders, None),
    "list": (_list, None),
    "cityscapes": (_cityscapes, lambda image: (cityscapes_ground_truth(image, "instanceIds")
                                               if image.endswith("_leftImg8bit.png") else None)),
    "pascal_context": (_pascal_context, None),
    "lip": (_lip, None),
}


def instance_file(dataset, image_path):
    """The instance-id map of an image in the dataset's layout, or None where the layout has none. The file may be
    missing (e.g. a copy without instance maps): callers check."""
    find = _LAYOUTS[get_dataset_spec(dataset).layout_kind][1]
    return find(image_path) if find else None


def list_samples(dataset, data_dir, split, require_labels=True):
    """``[(image_path, label_path)]`` of a split, sorted. ``dataset``: a name, card path or spec. Raises
    :class:`DatasetError` when the data is missing, a split is empty, or (``require_labels``) an image has no label
    file."""
    spec = get_dataset_spec(dataset)
    if data_dir is None or not os.path.isdir(data_dir):
        raise _missing(spec, data_dir, "--data-dir is not set" if data_dir is None
                       else f"data directory not found: {data_dir}")
    samples = _LAYOUTS[spec.layout_kind][0](spec, data_dir, split)
    entry = spec.split_entry(split) or {}
    if samples and ("include" in entry or "exclude" in entry):
        samples = _filtered(entry, samples)
        if not samples:
            raise _missing(spec, data_dir, f"no image of split '{split}' is left by its include / exclude patterns "
                           f"(include: {list(entry.get('include', ['*']))}, exclude: {list(entry.get('exclude', []))})")
    if not samples:
        raise _missing(spec, data_dir, f"no images found for split '{split}'")
    for pair in samples:
        for path in pair:
            if not_utf8(path):
                raise DatasetError(f"dataset {describe(spec)}: the file name {path!r} is not UTF-8; rename it (or the "
                                   "folder) with UTF-8 characters")
    if require_labels:
        for image, label in samples:
            if not os.path.isfile(image):
                raise DatasetError(f"dataset {describe(spec)}: image file listed but missing: {image}")
            if not os.path.isfile(label):
                raise DatasetError(f"dataset {describe(spec)}: image without label: {image} (expected {label})")
    return samples
