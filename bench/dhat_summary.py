#!/usr/bin/env python3
"""Summarise a dhat heap profile (valgrind --tool=dhat) per stream: the bytes live at
the heap's peak (t-gmax), divided by the number of streams held, by allocation site.
A site is named by its first frames outside the allocator and the standard library.

Standard library only. Used by bench/heap.sh.
"""

import argparse
import json
import re

SKIP = re.compile(
    r"vgpreload|library/(alloc|core|std)/|alloc::|raw_vec|__rust|malloc|memalign|"
    r"\(unix\.rs:|bytes_mut\.rs|/bytes-[0-9.]+/|hashbrown"
)
REGISTRY = re.compile(r"/root/\.cargo/registry/src/index\.crates\.io-[0-9a-f]+/|\S*/crates/")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--sites", type=int, default=15)
    a = ap.parse_args()
    d = json.load(open(a.file))
    ftbl = d["ftbl"]
    sites = []
    for pp in d["pps"]:
        if not pp.get("gb"):
            continue
        frames = [ftbl[i] for i in pp["fs"]]
        named = [f for f in frames if not SKIP.search(f)] or frames
        sites.append((pp["gb"], pp["gbk"], named))
    sites.sort(key=lambda s: -s[0])
    total = sum(s[0] for s in sites)
    n = a.streams
    print(f"heap at peak: {total:,} bytes = {total / n / 1024:.1f} KB a stream "
          f"(idle heap included; {len(sites)} sites)")
    for gb, blocks, frames in sites[: a.sites]:
        print(f"{gb / n / 1024:7.2f} KB a stream ({blocks / n:.2f} blocks)")
        for f in frames[:3]:
            f = REGISTRY.sub("", f)
            f = re.sub(r"^0x[0-9A-F]+: ", "", f)
            print(f"          {f[:150]}")


if __name__ == "__main__":
    main()
