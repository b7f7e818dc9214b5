"""The test setting of a dataset: its card's ``evaluation`` section (the built-in cards hold HRNet's published
``experiments/*.yaml`` TEST sections).

``scales`` are factors of the original image size; ``slide`` gives the window (crop) size, ``None`` = whole image.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TestSetting:
    __test__ = False  # not a pytest test class despite the name
    scales: tuple = (1.0,)
    flip: bool = False
    mode: str = "whole"  # "whole" or "slide"
    crop_size: tuple = None  # slide window (h, w)
    stride: tuple = None  # slide stride (h, w); default 2/3 of the window, like HRNet

    def describe(self):
        scales = "single-scale" if self.scales == (1.0,) else f"ms {','.join(f'{s:g}' for s in self.scales)}"
        flip = " + flip" if self.flip else ""
        mode = f", slide {self.crop_size[0]}x{self.crop_size[1]}" if self.mode == "slide" else ", whole"
        return f"{scales}{flip}{mode}"

    def single_scale(self):
        """The --ss variant: one scale, no flip, same window."""
        return dataclasses.replace(self, scales=(1.0,), flip=False)


def test_setting(dataset):
    """The :class:`TestSetting` of a dataset (a built-in name, a card path or a DatasetSpec)."""
    from gsto_tf.data.registry import get_dataset_spec

    return TestSetting(**dict(get_dataset_spec(dataset).evaluation))


test_setting.__test__ = False  # not a pytest test despite the name
