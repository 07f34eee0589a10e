"""maskext profiling demo: every op family, side by side with eager PyTorch,
torch._masked_softmax, torch.compile and the memory floor, on CUDA when a GPU
is present, else on the CPU.

    python benchmarks/profile_all.py [--device cpu|cuda] [--threads N] [--full] [--out DIR]

Writes CSV, Markdown and (with matplotlib) PNG files to benchmarks/out/ and
prints the Markdown tables. CPU timings on a shared machine are noisy: read
the ratios, which are measured in the same run.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_masked_ops  # noqa: E402
import bench_masks  # noqa: E402
import bench_softmax  # noqa: E402
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_common_args(ap)
    ap.add_argument("--full", action="store_true", help="the longer sweep")
    a = ap.parse_args()
    common.apply_common_args(a)
    print(f"maskext profile on {common.device_name(a.device)}, torch {torch.__version__}\n", flush=True)
    print("## Mask building\n\n" + bench_masks.run(a.device, a.out), flush=True)
    print("## Masked softmax\n\n" + bench_softmax.run(a.device, a.full, out_dir=a.out), flush=True)
    print("## Other masked ops\n\n" + bench_masked_ops.run(a.device, a.out), flush=True)
    print(f"Results written to {a.out}/")


if __name__ == "__main__":
    main()
