"""Class statistics of a split: pixel frequencies and median-frequency class weights for a dataset card.

Median-frequency balancing (Eigen & Fergus 2015, used by SegNet and ENet on CamVid): ``freq(c)`` is the number of
pixels of class ``c`` divided by the number of pixels of the images in which ``c`` occurs (void pixels excluded),
and ``weight(c) = median(freq) / freq(c)``. A class that occurs in no image gets weight 1.
"""

import dataclasses

import numpy as np

from gsto_tf.data.decode import read_label_file
from gsto_tf.data.layouts import list_samples
from gsto_tf.data.registry import IGNORE_LABEL, get_dataset_spec


@dataclasses.dataclass
class ClassStats:
    class_names: tuple
    pixels: np.ndarray  # int64 [K]: pixels of each class
    image_pixels: np.ndarray  # int64 [K]: labelled pixels of the images in which the class occurs
    images: np.ndarray  # int64 [K]: images in which the class occurs
    void_pixels: int
    num_images: int

    @property
    def fraction(self):
        """Each class's share of the labelled (non-void) pixels."""
        return self.pixels / max(int(self.pixels.sum()), 1)

    def median_frequency_weights(self):
        present = self.image_pixels > 0
        freq = np.where(present, self.pixels / np.maximum(self.image_pixels, 1), np.nan)
        median = np.nanmedian(freq) if present.any() else 1.0
        return np.where(present, median / np.where(present, freq, 1.0), 1.0)

    def table(self):
        weights = self.median_frequency_weights()
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':<{width}}  {'pixels %':>8}  {'images':>6}  {'weight':>7}"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  {100 * self.fraction[i]:8.2f}  {self.images[i]:6d}  {weights[i]:7.4f}")
        total = int(self.pixels.sum()) + self.void_pixels
        lines.append(f"void: {100 * self.void_pixels / max(total, 1):.2f} % of {total} pixels in {self.num_images} "
                     "images")
        lines.append("class_weights: [" + ", ".join(f"{w:.4f}" for w in weights) + "]   # median frequency; "
                     "for the card, used with train.class_weights: true")
        return "\n".join(lines)


def class_stats(dataset, data_dir, split="train", limit=None):
    """:class:`ClassStats` of a split, each label read and checked with the pipelines' decoder."""
    spec = get_dataset_spec(dataset)
    samples = list_samples(spec, data_dir, split)
    if limit:
        samples = samples[:limit]
    k = spec.num_classes
    pixels, image_pixels, images = (np.zeros(k, np.int64) for _ in range(3))
    void = 0
    lut = spec.label_lut()
    for _, label_path in samples:
        train = lut[read_label_file(label_path).astype(np.int64)]
        if (train < 0).any():
            from gsto_tf.data.decode import check_label_values

            check_label_values(spec, read_label_file(label_path), label_path)  # raises, naming the values
        counts = np.bincount(train[train != IGNORE_LABEL], minlength=k)[:k]
        void += int((train == IGNORE_LABEL).sum())
        present = counts > 0
        pixels += counts
        image_pixels[present] += int(counts.sum())
        images[present] += 1
    return ClassStats(spec.class_names, pixels, image_pixels, images, void, len(samples))
