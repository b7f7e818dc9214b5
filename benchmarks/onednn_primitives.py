#!/usr/bin/env python
"""Which oneDNN kernels TensorFlow runs in fp32 and bf16: ``ONEDNN_VERBOSE=1`` primitive executions, summed.

TensorFlow's x86 builds run convolutions, matmuls and some element-wise ops through oneDNN. Whether bf16 is fast
depends on the implementation oneDNN picks: a JIT kernel for the CPU's bf16 instructions (``brg_conv_fwd:avx512_core_bf16``,
``..._amx``), or a kernel for a CPU without them, which converts to fp32 (``gemm:ref``, ``..._avx2``). This script
runs one step of ``benchmarks/speed.py`` per precision in a child process with ``ONEDNN_VERBOSE=1`` (oneDNN reads
it at load time), takes the lines printed for the measured steps (after warm-up) and sums them per primitive kind,
implementation, propagation kind and source data type. ``isa`` is the instruction set oneDNN reports for this CPU.
Ops that TensorFlow runs without oneDNN (Eigen kernels: element-wise ops, casts, resizes, and everything oneDNN has
no kernel for) do not appear here; ``benchmarks/profile_precision.py`` shows all ops.
Writes benchmarks/results/onednn_primitives.csv.

    python benchmarks/onednn_primitives.py [--model gsto_hrnet_w18_small_v2] [--size 512x1024] [--kinds infer train]
"""

import argparse
import collections
import os
import re
import subprocess
import sys

MARKER = "=== measured steps ==="


def child(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from speed import POLICIES, step_functions  # this folder is sys.path[0]

    fns, _ = step_functions(args.model, args.size, dtype=POLICIES[args.precision], kinds=(args.kind,))
    fn = fns[args.kind]
    fn().numpy()
    fn().numpy()
    print(MARKER, flush=True)
    for _ in range(args.steps):
        fn().numpy()
    sys.stdout.flush()
    return 0


def parse(lines):
    """(isa, {(primitive, implementation, prop_kind, src dtype): [executions, ms]}) of oneDNN verbose lines."""
    isa, totals = "", collections.defaultdict(lambda: [0, 0.0])
    measured = False
    for line in lines:
        if line.startswith(MARKER):
            measured = True
            continue
        fields = line.strip().split(",")
        if len(fields) > 4 and fields[0] == "onednn_verbose" and fields[2:4] == ["info", "cpu"] and "isa:" in line:
            isa = line.split("isa:", 1)[1].strip()
        if not measured or len(fields) < 12 or fields[0] != "onednn_verbose" or fields[2:4] != ["primitive", "exec"]:
            continue
        kind, impl, prop, memory = fields[5], fields[6], fields[7], fields[8]
        dtype = re.search(r"src[:_](\w+?)[:_ ]", memory + " ")
        entry = totals[kind, impl, prop, dtype.group(1) if dtype else "?"]
        entry[0] += 1
        try:
            entry[1] += float(fields[-1])
        except ValueError:
            pass
    return isa, totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gsto_hrnet_w18_small_v2")
    parser.add_argument("--size", default="512x1024", help="input HxW (default 512x1024)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps per precision and kind")
    parser.add_argument("--kinds", nargs="+", default=["infer", "train"], choices=["infer", "infer_unfolded", "train"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "onednn_primitives.csv"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="infer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from gsto_tf.user_input import parse_size

        args.size = parse_size(args.size)
        return child(args)
    rows = []
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    for kind in args.kinds:
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--size", args.size,
                   "--steps", str(args.steps), "--precision", precision, "--kind", kind]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            isa, totals = parse(out.stdout.splitlines())
            for (primitive, impl, prop, dtype), (count, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
                rows.append({"step": kind, "precision": precision, "primitive": primitive, "implementation": impl,
                             "prop_kind": prop, "src_dtype": dtype, "executions": round(count / args.steps),
                             "ms": round(ms / args.steps, 1), "isa": isa})
    from gsto_tf.tables import print_and_write

    print_and_write(rows, args.out, f"oneDNN primitives per step (ONEDNN_VERBOSE=1, {args.steps} steps), "
                    f"{args.model}, batch 1, {args.size}, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
