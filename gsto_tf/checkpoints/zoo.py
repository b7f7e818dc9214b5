"""The model zoo: models trained by this project, shipped inside the package, usable by name wherever a checkpoint
path is taken (``eval``, ``predict``, ``export``, ``visualize``, ``train --pretrained``, :func:`load_checkpoint`).

Each model is a folder ``gsto_tf/zoo/<name>/`` holding

* ``model.keras``: the trained model (BatchNorm not folded, no optimizer state), float32;
* ``card.yaml``: what it is and how it was made: ``dataset``, ``model``, ``classes``, the training ``config`` as the
  run saved it, ``steps``, ``wall_minutes``, ``cpu``, and ``scores`` (per split: ``miou``, ``pixel_accuracy`` and
  ``per_class_iou``, in %, single scale, with the command that measures them);
* ``history.csv``: the run's history (one row per backup chunk, as training writes it).

``experiments/zoo_add.py`` makes such a folder from a finished run directory.
"""

import dataclasses
import os

import yaml

ZOO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo")
MODEL_FILE, CARD_FILE, HISTORY_FILE = "model.keras", "card.yaml", "history.csv"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    folder: str
    card: dict

    @property
    def checkpoint(self):
        return os.path.join(self.folder, MODEL_FILE)

    @property
    def history(self):
        return os.path.join(self.folder, HISTORY_FILE)

    def summary(self):
        """One line: name, model, dataset, steps, the scores."""
        scores = ", ".join(f"{split} {values['miou']:.1f}" for split, values in self.card.get("scores", {}).items())
        return (f"{self.name}: {self.card['model']} on {self.card['dataset']}, {self.card['steps']} steps "
                f"({self.card['wall_minutes']:.0f} min on {self.card['cpu']}); mIoU {scores}")


def zoo_names():
    """The names of the shipped models, sorted."""
    if not os.path.isdir(ZOO_DIR):
        return []
    return sorted(n for n in os.listdir(ZOO_DIR) if os.path.isfile(os.path.join(ZOO_DIR, n, CARD_FILE)))


def zoo_entry(name):
    """The :class:`ZooEntry` of a shipped model; KeyError naming the shipped ones for any other name."""
    if name not in zoo_names():
        raise KeyError(f"no zoo model {name!r}; the zoo has: {', '.join(zoo_names()) or 'nothing'}")
    folder = os.path.join(ZOO_DIR, name)
    with open(os.path.join(folder, CARD_FILE), encoding="utf-8") as f:
        return ZooEntry(name, folder, yaml.safe_load(f))


def resolve_checkpoint(path_or_name):
    """A checkpoint path as given, or the model file of a zoo name (a path that exists wins over a zoo name)."""
    path = os.fspath(path_or_name)
    if not os.path.exists(path) and path in zoo_names():
        return zoo_entry(path).checkpoint
    return path
