"""`gsto-tf counts`: params and GFLOPs of our models next to the paper's and the official numbers."""


from gsto_tf import tables
from gsto_tf.user_input import parse_size
from gsto_tf.models.counting import OFFICIAL_COUNTS, SLIDE_COUNTS, UNUSED_ATT1_PARAMS, count_named_model

SLIDE_MODELS = ("hrnetv2_w18_small_v2", "gsto_hrnet_w18_small_v2", "hrnetv2_w48", "gsto_hrnet_w48")
ALL_MODELS = (
    "hrnetv2_w18_small_v1", "gsto_hrnet_w18_small_v1", "hrnetv2_w18_small_v2", "gsto_hrnet_w18_small_v2",
    "hrnetv2_w18", "gsto_hrnet_w18", "hrnetv2_w32", "gsto_hrnet_w32", "hrnetv2_w48", "gsto_hrnet_w48",
)


def add_arguments(parser):
    parser.add_argument("--models", nargs="+", default=None, help="model names (default: the slide table's four)")
    parser.add_argument("--all", action="store_true", help="all HRNetV2 / GSTO-HRNet widths")
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the head (default 19, Cityscapes)")
    parser.add_argument("--input-size", type=parse_size, default="1024x2048",
                        help="HxW (default 1024x2048, the paper's)")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")


def count_table(models, num_classes=19, input_size=(1024, 2048)):
    """Rows of counts with the official and slide numbers beside ours (official ones only at 19 classes and
    1024x2048, where they were measured)."""
    rows = []
    official_setting = num_classes == 19 and tuple(input_size) == (1024, 2048)
    for name in models:
        c = count_named_model(name, num_classes, input_size)
        off = OFFICIAL_COUNTS.get(name, {}) if official_setting else {}
        slide = SLIDE_COUNTS.get(name, {}) if official_setting else {}
        att1 = UNUSED_ATT1_PARAMS if name.startswith("gsto_") and off else 0
        rows.append({
            "model": name,
            "params": c.params,
            "official_params": off.get("params", ""),
            "official_params_minus_att1": off["params"] - att1 if off else "",
            "paper_params_M": round(c.paper_params / 1e6, 3),
            "official_paper_params": off.get("paper_params", ""),
            "slide_params_M": slide.get("paper_params_m", ""),
            "paper_GFLOPs": round(c.paper_gflops, 2),
            "official_GFLOPs": off.get("paper_gflops", ""),
            "slide_GFLOPs": slide.get("paper_gflops", ""),
            "full_GFLOPs": round(c.full_gflops, 1),
            "paper_params": c.paper_params,
        })
    return rows


def format_table(rows):
    return tables.format_table(rows, ["model", "params", "official_params_minus_att1", "paper_params",
                                      "official_paper_params", "slide_params_M", "paper_GFLOPs", "official_GFLOPs",
                                      "slide_GFLOPs", "full_GFLOPs"])


def main(args):
    models = args.models or (ALL_MODELS if args.all else SLIDE_MODELS)
    size = args.input_size
    rows = count_table(models, args.num_classes, size)
    print(f"params / GFLOPs at {size[0]}x{size[1]}, {args.num_classes} classes "
          "(paper convention: conv multiply-adds / 2^30, BN not counted in paper params; "
          "official GSTO params include the unused att1, 173 params)")
    print(format_table(rows))
    if args.csv:
        tables.write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0
