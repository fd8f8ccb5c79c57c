#!/usr/bin/env python
"""Capture cost relative to one plain forward pass over the same images, measured in one run.

Prints time ratios (target: <= 1.2x) and a memory ratio:

* end to end: ``capture()`` (decode, forward with pooling hooks on every block, cache
  writes) / a plain loop of the same DataLoader through the model;
* model only: forward with the pooling hooks / plain forward, on images already in
  memory (isolates the hooks from decoding and disk);
* memory: bytes per image of the full block outputs (what storing feature maps would
  take) / bytes per image that capture keeps (pooled features and logits); on a GPU also
  the peak allocated memory of the hooked over the plain forward pass.

Each measurement is repeated and the median taken, plain and capture interleaved, so
both see the same machine state. Example::

    python scripts/benchmark_capture.py --model cifar:resnet20 \
        --weights ../shared/weights/cifar10-resnets/resnet20-12fca82f.th \
        --data ../shared/data/cifar10/test --images 2000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder, capture
from vision_lens.readout import FeatureLayout
from vision_lens.data import ImageFolderSource, TransformedSubset, select


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar:resnet20", help="model as family:arch (default: cifar:resnet20)")
    parser.add_argument("--weights", default="random", help="checkpoint path, 'pretrained' or 'random' (default)")
    parser.add_argument("--data", required=True, help="one ImageFolder (<data>/<class>/<image>)")
    parser.add_argument("--images", type=int, default=2000, help="images per measurement (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each kind (default: 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = parser.parse_args()

    adapter = create_adapter(args.model, weights=args.weights).to(args.device)
    source = ImageFolderSource.scan(args.data)
    indices = select(len(source), args.images, seed=0)
    label_map = np.arange(len(source.classes))
    layout = FeatureLayout.of(adapter.blocks, 1)
    dataset = TransformedSubset(source, indices, adapter.transform)

    @torch.no_grad()
    def plain_pass():
        for images, _ in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers):
            adapter.logits(images.to(args.device))

    def capture_pass():
        with tempfile.TemporaryDirectory() as cache:
            capture(adapter, source, indices, cache, label_map, layout, batch_size=args.batch_size, workers=args.workers,
                    desc="benchmark capture")

    in_memory = torch.stack([dataset[i][0] for i in range(min(len(dataset), 4 * args.batch_size))]).to(args.device)

    @torch.no_grad()
    def forward_plain():
        for batch in in_memory.split(args.batch_size):
            adapter.logits(batch)

    @torch.no_grad()
    def forward_hooked():
        with BlockRecorder(adapter, layout) as recorder:
            for batch in in_memory.split(args.batch_size):
                adapter.logits(batch)
                [p.cpu() for p in recorder.pooled]

    full_bytes = 0

    def count_full(module, inputs, output):
        nonlocal full_bytes
        full_bytes += output[:1].numel() * output.element_size()

    hooks = [adapter.model.get_submodule(b.module).register_forward_hook(count_full) for b in adapter.blocks]
    with torch.no_grad():
        adapter.logits(in_memory[:1])
    for hook in hooks:
        hook.remove()
    kept_bytes = 4 * (sum(b.channels for b in adapter.blocks) + adapter.num_classes)

    peak = {}
    if torch.cuda.is_available():
        for name, fn in (("plain", forward_plain), ("hooked", forward_hooked)):
            torch.cuda.reset_peak_memory_stats()
            fn()
            peak[name] = torch.cuda.max_memory_allocated()

    plain_pass()  # warm-up: page cache, allocator, worker start-up
    times: dict[str, list[float]] = {"plain": [], "capture": [], "forward": [], "hooked": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(plain_pass))
        times["capture"].append(timed(capture_pass))
        times["forward"].append(timed(forward_plain))
        times["hooked"].append(timed(forward_hooked))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, {len(adapter.blocks)} blocks, {len(indices)} images, device {args.device}, "
          f"batch {args.batch_size}, workers {args.workers}, median of {args.repeats}")
    print(f"  plain forward pass over the images   {med['plain']:8.2f} s")
    print(f"  capture (hooks, pooling, cache)      {med['capture']:8.2f} s")
    print(f"  end-to-end ratio capture / plain     {med['capture'] / med['plain']:8.3f}x")
    print(f"  model-only ratio hooked / plain      {med['hooked'] / med['forward']:8.3f}x "
          f"({len(in_memory)} images in memory)")
    print(f"  memory per image: full block maps {full_bytes / 1024:.1f} KiB, kept by capture "
          f"{kept_bytes / 1024:.2f} KiB: {full_bytes / kept_bytes:.0f}x less")
    if peak:
        print(f"  GPU peak memory ratio hooked / plain {peak['hooked'] / peak['plain']:8.3f}x")


if __name__ == "__main__":
    main()
