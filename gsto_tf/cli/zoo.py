"""`gsto-tf zoo`: the models trained here, with how they were trained and their scores."""

from gsto_tf.checkpoints import zoo_entry, zoo_names
from gsto_tf.tables import format_table


def add_arguments(parser):
    parser.add_argument("name", nargs="?", help="one zoo model: its card (config, per-class IoU, the command that "
                        "measures its scores)")


def main(args):
    if args.name:
        import yaml

        from gsto_tf.cli.common import UsageError

        try:
            entry = zoo_entry(args.name)
        except KeyError as exc:
            raise UsageError(f"zoo: {exc.args[0]}") from None
        print(f"{entry.summary()}\ncheckpoint: {entry.checkpoint}\n")
        print(yaml.safe_dump(entry.card, sort_keys=False, width=110))
        return 0
    rows = []
    for name in zoo_names():
        card = zoo_entry(name).card
        row = {"name": name, "model": card["model"], "dataset": card["dataset"], "steps": card["steps"],
               "minutes": f"{card['wall_minutes']:.0f}"}
        row.update({f"{split} mIoU": f"{values['miou']:.1f}" for split, values in card["scores"].items()})
        rows.append(row)
    if not rows:
        print("no zoo model is shipped with this version")
        return 0
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(format_table(rows, columns))
    print("\nuse a name wherever a checkpoint goes: gsto-tf predict street.jpg --checkpoint NAME --dataset DATASET "
          "--output out/; `gsto-tf zoo NAME` shows one card")
    return 0
