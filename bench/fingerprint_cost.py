"""What an ImageFolder tree's fingerprint (the listing in its shards' store key, walked on every
run that asks for those shards) costs: a generated tree of ``--files`` tiny PNGs over
``--classes`` class dirs, its listing + digest timed (the first walk after the tree was made,
then the median of ``--runs`` warm ones), linearly projected to ImageNet-1k's train split.

    python -m bench.fingerprint_cost [--files 100000] [--classes 1000] [--runs 5] [--dir DIR]

The first walk is "cold-ish" only: the tree was just written, so its directory entries are
still cached; give ``--dir`` on the filesystem that will hold the real tree (e.g. NFS) to see
that filesystem's stat cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from winft_lightning.data.folder_listing import list_folder
from winft_lightning.data.sources import png_bytes

IMAGENET_TRAIN_FILES = 1_281_167
# the walk never opens a file: the bytes only make the tree a real one
TINY_PNG = png_bytes(np.zeros((1, 1), np.uint8))
SOURCE = {"splits": {"train": "train", "val": None, "test": None}}


def make_tree(root: Path, files: int, classes: int) -> None:
    for c in range(classes):
        (root / "train" / f"c{c:04d}").mkdir(parents=True)
    for i in range(files):
        (root / "train" / f"c{i % classes:04d}" / f"img{i:07d}.png").write_bytes(TINY_PNG)


def fingerprint_seconds(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    listing = list_folder({**SOURCE, "path": str(root)})
    _ = listing.digest
    return time.perf_counter() - start, len(listing.files())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to make the tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fingerprint_cost-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        classes = min(args.classes, args.files)
        make_tree(root, args.files, classes)
        made = time.perf_counter() - start
        first, listed = fingerprint_seconds(root)
        assert listed == args.files, (listed, args.files)
        warm = statistics.median(fingerprint_seconds(root)[0] for _ in range(args.runs))
        start = time.perf_counter()
        listing = list_folder({**SOURCE, "path": str(root)})
        listing.save(root / "listing.json.gz")
        saved = time.perf_counter() - start - warm
        size = (root / "listing.json.gz").stat().st_size
    scale = IMAGENET_TRAIN_FILES / args.files
    print(f"tree: {args.files:,} files in {classes} class dirs under {root} (made in {made:.1f} s)")
    print(
        f"fingerprint (listing + digest): first {first:.3f} s, warm median of {args.runs} {warm:.3f} s"
    )
    print(f"  {1e6 * warm / args.files:.2f} us per file")
    print(
        f"listing kept in a built entry: {size / 1e3:.1f} kB gzip, written in ~{max(saved, 0):.3f} s"
    )
    print(f"projected to ImageNet-1k train ({IMAGENET_TRAIN_FILES:,} files, linear): first "
          f"{first * scale:.1f} s, warm {warm * scale:.1f} s, listing {size * scale / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
