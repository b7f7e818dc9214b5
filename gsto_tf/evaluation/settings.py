"""Published test settings per dataset (HRNet's ``experiments/*.yaml`` TEST sections), in one table.

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


PUBLISHED_TEST_SETTINGS = {
    "cityscapes": TestSetting(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True, mode="slide",
                              crop_size=(1024, 2048)),
    "pascal_context": TestSetting(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0), flip=True),
    "pascal_context_60": TestSetting(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0), flip=True),
    "lip": TestSetting(flip=True),
    "synthetic": TestSetting(),
}


def test_setting(dataset):
    if dataset not in PUBLISHED_TEST_SETTINGS:
        raise ValueError(f"no test setting for dataset {dataset!r}; known: {sorted(PUBLISHED_TEST_SETTINGS)}")
    return PUBLISHED_TEST_SETTINGS[dataset]
