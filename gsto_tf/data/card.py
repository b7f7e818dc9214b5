"""Dataset cards: a dataset described in one YAML file, read into a :class:`~gsto_tf.data.registry.DatasetSpec`.

A card holds everything the project knows about a dataset: classes, palette, void values, the raw -> train id
mapping, the folder layout and splits, flip pairs, class weights, instance classes and categories, the training
recipe and the evaluation setting. The built-in datasets are cards in ``gsto_tf/data/cards/``; a user passes the
path of their own (``--dataset my_data.yaml``). docs/data.md documents every key.

Every problem in a card is one :class:`DatasetCardError` naming the card file and the key. Values are checked here;
the recipe's keys are checked against the experiment config when a run is configured
(:func:`gsto_tf.training.config.make_config`), with the card named as their source.
"""

import math
import os
import re

from gsto_tf.images import inference_problem
from gsto_tf.user_input import MAX_YAML_BYTES, YAMLInputError, did_you_mean, load_yaml, shorten, size_or_none

IGNORE_LABEL = 255  # the train id of ignored pixels everywhere downstream of the label mapping
LAYOUTS = ("folders", "list", "cityscapes", "pascal_context", "lip")
GENERATORS = ("synthetic",)  # data made on first use instead of read from --data-dir
EVALUATION_MODES = ("whole", "slide")
RECIPE_SECTIONS = ("data", "model", "train", "eval")

_KEYS = {
    "name": "the dataset's name (shown in logs, run folders and errors)",
    "classes": "list of class names, in train-id order",
    "palette": "one [r, g, b] per class (optional)",
    "void": "label values ignored by the loss and the metrics (optional)",
    "label_map": "{raw value: train id} (optional; default: value i is class i)",
    "invalid_values_hint": "a sentence added when a label file holds a value that is neither a class nor void",
    "layout": f"one of {', '.join(LAYOUTS)}",
    "splits": "{split: {images, labels} | {list} , include, exclude, size}",
    "layout_help": "the expected files, shown when the data is missing (optional)",
    "source": "where to get the data (optional)",
    "flip_pairs": "[[class, class], ...] swapped by a horizontal flip (optional)",
    "class_weights": "one loss weight per class, used when train.class_weights is true (optional)",
    "instances": "{classes: {class: average instance size}, categories: {category: [class, ...]}} (optional)",
    "recipe": "{data: {...}, model: {...}, train: {...}, eval: {...}}: the default experiment config (optional)",
    "evaluation": "{scales, flip, mode, crop_size, stride}: the test setting (optional)",
    "generator": f"one of {', '.join(GENERATORS)}: the data is generated on first use (optional)",
}
_SPLIT_KEYS = ("images", "labels", "list", "include", "exclude", "size")
# Split keys that take one string or a list of strings (read as a tuple).
_SPLIT_LIST_KEYS = ("images", "labels", "include", "exclude")
_EVALUATION_KEYS = ("scales", "flip", "mode", "crop_size", "stride")


# A dataset's name becomes part of run folder names (runs/<name>-<model>-<time>): no path separators, no "..", no
# control characters or terminal escapes.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class DatasetCardError(ValueError):
    """A dataset card is missing, unreadable or holds a wrong value; the message names the card and the key."""


class _Checker:
    """Reads keys of one card, each problem raised as a DatasetCardError naming the card and the key."""

    def __init__(self, card, where):
        self.card = card
        self.where = where

    def fail(self, key, what):
        raise DatasetCardError(f"dataset card {self.where}: {key}: {what}")

    def is_int(self, value):
        return isinstance(value, int) and not isinstance(value, bool)

    def int_in(self, key, value, lo, hi):
        if not self.is_int(value) or not lo <= value <= hi:
            self.fail(key, f"expected an integer in {lo}..{hi}, got {shorten(value)}")
        return value

    def number(self, key, value, positive=False):
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (positive and not value > 0):
            self.fail(key, f"expected a finite {'positive ' if positive else ''}number, got {shorten(value)}")
        return float(value)

    def text(self, key, value):
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {shorten(value)}")
        return value

    def mapping(self, key, value):
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {shorten(value)}")
        return value

    def sequence(self, key, value):
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {shorten(value)}")
        return value

    def pair(self, key, value):
        if isinstance(value, str) and size_or_none(value):  # "HxW", as sizes are written on the command line
            return size_or_none(value)
        if not isinstance(value, list) or len(value) != 2 or not all(self.is_int(v) and v > 0 for v in value):
            self.fail(key, f"expected HxW or [height, width] (two positive integers), got {shorten(value)}")
        return tuple(value)


def _class_index(check, key, value, class_names):
    """A class given by train id or by name -> its train id."""
    if isinstance(value, str):
        if value not in class_names:
            check.fail(key, f"unknown class {value!r}; classes: {', '.join(class_names)}")
        return class_names.index(value)
    return check.int_in(key, value, 0, len(class_names) - 1)


def _classes(check, card):
    names = check.sequence("classes", card.get("classes"))
    if not names:
        check.fail("classes", "the list is empty")
    if len(names) > IGNORE_LABEL:
        check.fail("classes", f"{len(names)} classes; at most {IGNORE_LABEL} (train id {IGNORE_LABEL} is ignore)")
    for i, name in enumerate(names):
        check.text(f"classes[{i}]", name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        check.fail("classes", f"names listed twice: {', '.join(duplicates)}")
    return tuple(names)


def _palette(check, card, num_classes):
    if "palette" not in card:
        return voc_palette(num_classes)
    palette = check.sequence("palette", card["palette"])
    if len(palette) != num_classes:
        check.fail("palette", f"{len(palette)} colours for {num_classes} classes (one [r, g, b] per class)")
    out = []
    for i, colour in enumerate(palette):
        if not isinstance(colour, list) or len(colour) != 3:
            check.fail(f"palette[{i}]", f"expected [r, g, b], got {shorten(colour)}")
        out.append(tuple(check.int_in(f"palette[{i}]", c, 0, 255) for c in colour))
    return tuple(out)


def _labels(check, card, num_classes):
    """(raw_to_train pairs, void values)."""
    void = tuple(check.int_in("void", v, 0, 255) for v in check.sequence("void", card.get("void", [])))
    if "label_map" in card:
        mapping = check.mapping("label_map", card["label_map"])
        if not mapping:
            check.fail("label_map", "the mapping is empty")
        pairs = tuple(sorted((check.int_in("label_map (a raw value)", raw, 0, 255),
                              check.int_in(f"label_map[{raw}]", train, 0, num_classes - 1))
                             for raw, train in mapping.items()))
    else:
        pairs = tuple((i, i) for i in range(num_classes))
    both = sorted(set(void) & {raw for raw, _ in pairs})
    if both:
        check.fail("void", f"values {both} are also classes (label_map, or the default value i = class i); a value "
                   "is either a class or void")
    return pairs, void


def _splits(check, card, layout):
    splits = check.mapping("splits", card.get("splits"))
    if not splits:
        check.fail("splits", "no split listed (e.g. train and val)")
    out = []
    for split, entry in splits.items():
        key = f"splits.{split}"
        check.text(key, split)
        entry = {} if entry is None else check.mapping(key, entry)
        unknown = sorted(set(entry) - set(_SPLIT_KEYS))
        if unknown:
            check.fail(f"{key}.{unknown[0]}", f"unknown key; {did_you_mean(unknown[0], _SPLIT_KEYS)}valid: "
                       f"{', '.join(_SPLIT_KEYS)}")
        if "size" in entry:
            check.int_in(f"{key}.size", entry["size"], 1, 10**9)
        entry = {k: _texts(check, f"{key}.{k}", v) if k in _SPLIT_LIST_KEYS else v for k, v in entry.items()}
        paths = [(part, path) for part in ("images", "labels") for path in entry.get(part, ())]
        if isinstance(entry.get("list"), str):
            paths.append(("list", entry["list"]))
        for part, path in paths:  # a card names files under --data-dir, never elsewhere
            if os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == "..":
                check.fail(f"{key}.{part}", f"expected a path inside --data-dir (relative, no '..' above it), got "
                           f"{shorten(path)}")
        if layout == "folders":
            for part in ("images", "labels"):
                if part not in entry:
                    check.fail(key, f"the folders layout needs `{part}: FOLDER` (relative to --data-dir)")
            if len(entry["images"]) != len(entry["labels"]):
                check.fail(key, f"{len(entry['images'])} image folders and {len(entry['labels'])} label folders; "
                           "list them in pairs (images: [a, b], labels: [a_labels, b_labels])")
        elif layout == "list":
            if "list" not in entry:
                check.fail(key, "the list layout needs `list: FILE` (one 'image_path label_path' pair a line)")
            check.text(f"{key}.list", entry["list"])
        if layout not in ("folders", "list"):
            extra = sorted(set(entry) - {"size"})
            if extra:
                check.fail(f"{key}.{extra[0]}", f"the {layout} layout finds its files itself; only `size` is read")
        out.append((split, tuple((k, entry[k]) for k in _SPLIT_KEYS if k in entry)))
    return tuple(out)


def _texts(check, key, value):
    """One string or a list of strings -> a tuple of strings."""
    values = value if isinstance(value, list) else [value]
    if not values:
        check.fail(key, "the list is empty")
    return tuple(check.text(key, v) for v in values)


def _instances(check, card, class_names):
    if "instances" not in card:
        return (), ()
    section = check.mapping("instances", card["instances"])
    unknown = sorted(set(section) - {"classes", "categories"})
    if unknown:
        check.fail(f"instances.{unknown[0]}", f"unknown key; {did_you_mean(unknown[0], ('classes', 'categories'))}"
                   "valid: classes, categories")
    classes = tuple((class_names[_class_index(check, "instances.classes", name, class_names)],
                     check.number(f"instances.classes.{name}", size, positive=True))
                    for name, size in check.mapping("instances.classes", section.get("classes", {})).items())
    categories = tuple(
        (check.text("instances.categories", category),
         tuple(class_names[_class_index(check, f"instances.categories.{category}", c, class_names)]
               for c in check.sequence(f"instances.categories.{category}", members)))
        for category, members in check.mapping("instances.categories", section.get("categories", {})).items())
    return classes, categories


def _evaluation(check, card):
    section = check.mapping("evaluation", card.get("evaluation", {}))
    unknown = sorted(set(section) - set(_EVALUATION_KEYS))
    if unknown:
        check.fail(f"evaluation.{unknown[0]}", f"unknown key; {did_you_mean(unknown[0], _EVALUATION_KEYS)}valid: "
                   f"{', '.join(_EVALUATION_KEYS)}")
    out = {}
    if "scales" in section:
        scales = check.sequence("evaluation.scales", section["scales"])
        if not scales:
            check.fail("evaluation.scales", "the list is empty")
        out["scales"] = tuple(check.number("evaluation.scales", s, positive=True) for s in scales)
    if "flip" in section:
        if not isinstance(section["flip"], bool):
            check.fail("evaluation.flip", f"expected true or false, got {shorten(section['flip'])}")
        out["flip"] = section["flip"]
    mode = section.get("mode", "whole")
    if mode not in EVALUATION_MODES:
        check.fail("evaluation.mode", f"expected one of {', '.join(EVALUATION_MODES)}, got {shorten(mode)}")
    out["mode"] = mode
    if mode == "slide":
        if "crop_size" not in section:
            check.fail("evaluation.crop_size", "slide mode needs the window size [height, width]")
        out["crop_size"] = check.pair("evaluation.crop_size", section["crop_size"])
        if "stride" in section:
            out["stride"] = check.pair("evaluation.stride", section["stride"])
    elif "crop_size" in section or "stride" in section:
        check.fail("evaluation.crop_size", "a window (crop_size / stride) is only read in slide mode")
    problem = inference_problem(out.get("scales"), out.get("crop_size"), out.get("stride"))
    if problem:
        check.fail("evaluation", problem)
    return tuple(out.items())


def _recipe(check, card):
    recipe = check.mapping("recipe", card.get("recipe", {}))
    for section, values in recipe.items():
        if section not in RECIPE_SECTIONS:
            check.fail(f"recipe.{section}", f"unknown section; valid: {', '.join(RECIPE_SECTIONS)}")
        check.mapping(f"recipe.{section}", values)
        if section == "data" and "dataset" in values:
            check.fail("recipe.data.dataset", "the card is the dataset; remove this key")
    return recipe


def spec_from_card(card, where, directory=None):
    """A :class:`~gsto_tf.data.registry.DatasetSpec` of a card already parsed into a dict. ``where`` names the card
    in errors; ``directory`` is the card's folder (relative list files are not resolved against it: paths in a card
    are relative to ``--data-dir``)."""
    from gsto_tf.data.registry import DatasetSpec

    check = _Checker(card, where)
    if not isinstance(card, dict):
        raise DatasetCardError(f"dataset card {where}: expected a mapping of keys (name, classes, layout, splits, "
                               f"...), got {type(card).__name__}")
    unknown = sorted(set(card) - set(_KEYS))
    if unknown:
        raise DatasetCardError(f"dataset card {where}: unknown key {unknown[0]!r}; {did_you_mean(unknown[0], _KEYS)}"
                               f"valid keys: {', '.join(_KEYS)}")
    for required in ("name", "classes", "layout", "splits"):
        if required not in card:
            check.fail(required, f"missing ({_KEYS[required]})")
    name = check.text("name", card["name"])
    if not _PLAIN_NAME.fullmatch(name):
        check.fail("name", f"expected a plain name (letters, digits, '_', '-', '.'; at most 64, not starting with "
                   f"'.' or '-'): it names run folders and files; got {shorten(name)}")
    class_names = _classes(check, card)
    layout = card["layout"]
    if layout not in LAYOUTS:
        check.fail("layout", f"expected one of {', '.join(LAYOUTS)}, got {shorten(layout)}")
    raw_to_train, void = _labels(check, card, len(class_names))
    flip_pairs = []
    for i, pair in enumerate(check.sequence("flip_pairs", card.get("flip_pairs", []))):
        if not isinstance(pair, list) or len(pair) != 2:
            check.fail(f"flip_pairs[{i}]", f"expected [class, class], got {shorten(pair)}")
        flip_pairs.append(tuple(_class_index(check, f"flip_pairs[{i}]", c, class_names) for c in pair))
    weights = None
    if "class_weights" in card:
        weights = check.sequence("class_weights", card["class_weights"])
        if len(weights) != len(class_names):
            check.fail("class_weights", f"{len(weights)} weights for {len(class_names)} classes")
        weights = tuple(check.number("class_weights", w, positive=True) for w in weights)
    generator = card.get("generator")
    if generator is not None and generator not in GENERATORS:
        check.fail("generator", f"expected one of {', '.join(GENERATORS)}, got {shorten(generator)}")
    instance_classes, categories = _instances(check, card, class_names)
    splits = _splits(check, card, layout)
    for key in ("layout_help", "source", "invalid_values_hint"):
        if key in card:
            check.text(key, card[key])
    return DatasetSpec(
        name=name,
        class_names=class_names,
        palette=_palette(check, card, len(class_names)),
        raw_to_train=raw_to_train,
        void=void,
        layout_kind=layout,
        splits=splits,
        layout_help=card.get("layout_help") or default_layout_help(layout, splits),
        source=card.get("source", f"described by {where}"),
        invalid_values_hint=card.get("invalid_values_hint", ""),
        flip_pairs=tuple(flip_pairs),
        class_weights=weights,
        instance_classes=instance_classes,
        categories=categories,
        recipe=_recipe(check, card),
        evaluation=_evaluation(check, card),
        generator=generator,
        card=where,
    )


def default_layout_help(layout, splits):
    """The expected files of a folders / list layout, from its splits (for "data not found" errors)."""
    lines = []
    for split, entry in splits:
        entry = dict(entry)
        if layout == "folders":
            lines += [f"{{root}}/{images}/<stem>.png|.jpg|.jpeg and {{root}}/{labels}/<stem>.png   ({split})"
                      for images, labels in zip(entry["images"], entry["labels"])]
        elif layout == "list":
            lines.append(f"{{root}}/{entry['list']}: one 'image_path label_path' pair a line, paths relative to "
                         f"{{root}}   ({split})")
    return "\n".join(lines) or f"the {layout} layout"


def read_card(path):
    """Parse and check the card file at ``path`` -> DatasetSpec."""
    if not os.path.isfile(path):
        raise DatasetCardError(f"dataset card {path}: file not found")
    try:
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise DatasetCardError(f"dataset card {path}: {os.path.getsize(path)} bytes; a card is at most "
                                   f"{MAX_YAML_BYTES} bytes of YAML")
        with open(path, encoding="utf-8") as f:
            card = load_yaml(f, f"dataset card {path}")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetCardError(f"dataset card {path}: cannot be read ({exc})") from None
    except YAMLInputError as exc:
        raise DatasetCardError(str(exc)) from None
    return spec_from_card(card, path, os.path.dirname(path))


def voc_palette(n):
    """The PASCAL VOC bit-interleaved colour map: the default palette of a card without one."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)
