#!/usr/bin/env python
"""Write synthetic ImageNet-shaped JPEGs, for timing the pipeline where ImageNet is not at hand.

The layout is the one ``vision-lens run --data`` reads: ``<out>/<split>/<synset>/<n>.JPEG``,
one folder per ILSVRC-2012 synset (the first ``--classes`` in devkit order), for a
``--fit-split`` and an ``--eval-split``. Each image is a smooth random colour field (a
7x7 grid upsampled bicubically) plus pixel noise, saved at JPEG quality 90: white noise
would make files, and so decoding, several times heavier than photographs of the same size.
Images are seeded by their position, so the same arguments write the same bytes. It prints
one JSON line: the images written and their mean file size. Example (the GPU benchmark)::

    python scripts/make_synthetic_images.py --out /tmp/synthetic --fit-per-class 10 --eval-per-class 5
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vision_lens.resources import devkit_synsets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset root to create (must not exist or be empty)")
    parser.add_argument("--classes", type=int, default=1000, help="synset folders per split (default: 1000)")
    parser.add_argument("--fit-per-class", type=int, default=10, help="images per class in the fit split (default: 10)")
    parser.add_argument("--eval-per-class", type=int, default=5,
                        help="images per class in the eval split (default: 5)")
    parser.add_argument("--fit-split", default="train", help="fit split folder (default: train)")
    parser.add_argument("--eval-split", default="val", help="eval split folder (default: val)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: every CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default: 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.classes <= 1000:
        parser.error(f"--classes must be within 1 ... 1000 (ILSVRC-2012 has 1,000 synsets), got {args.classes}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty folder; name a new one")
    return args


def synthetic_image(seed: int, size: int) -> Image.Image:
    """A smooth random colour field with pixel noise, ``size`` x ``size`` RGB."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image(job: tuple[Path, int, int]) -> int:
    """Write one image; returns its size in bytes."""
    path, seed, size = job
    synthetic_image(seed, size).save(path, quality=90)
    return path.stat().st_size


def main() -> None:
    args = parse_args()
    synsets = [synset for synset, _ in devkit_synsets()[: args.classes]]
    jobs = []
    for split, per_class in ((args.fit_split, args.fit_per_class), (args.eval_split, args.eval_per_class)):
        for synset in synsets:
            folder = Path(args.out) / split / synset
            folder.mkdir(parents=True)
            jobs += [(folder / f"{n}.JPEG", args.seed + len(jobs) + n, args.size) for n in range(per_class)]
    with ProcessPoolExecutor(args.workers) as pool:
        sizes = list(pool.map(write_image, jobs, chunksize=64))
    print(json.dumps({"out": args.out, "images": len(sizes), "mean_bytes": sum(sizes) / max(1, len(sizes))}))


if __name__ == "__main__":
    main()
