#!/usr/bin/env python3
"""Reference hit ratios from libCacheSim (`pip install libcachesim`) for the traces and sizes
kryonix-cachesim replays, as JSON lines on stdout: one object per trace and size with every
policy libCacheSim runs on unit-size objects. scripts/bench-cachesim compares them with ours.

    scripts/cachesim-reference.py --sizes 5,20 TRACE...
"""
import argparse
import gzip
import json
import lzma
import os
import struct
import sys
import tempfile

import libcachesim as lcs

POLICIES = ["LRU", "LFU", "ARC", "LIRS", "TwoQ", "S3FIFO", "Sieve", "WTinyLFU", "LeCaR",
            "Cacheus", "ClockPro", "SLRU", "Hyperbolic", "LHD", "Clock", "FIFO"]


def read_keys(path):
    """The trace's keys, read as kryonix-cachesim reads them."""
    name = os.path.basename(path)
    if name.endswith(".xz") or name.endswith(".bin"):
        data = lzma.open(path).read() if name.endswith(".xz") else open(path, "rb").read()
        return [k for (k,) in struct.iter_unpack(">I", data)]
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as lines:
        return [int(line) for line in (l.strip() for l in lines) if line and line != "*"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="5,20")
    parser.add_argument("traces", nargs="+")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    for path in args.traces:
        keys = read_keys(path)
        distinct = len(set(keys))
        name = os.path.basename(path).split(".trace")[0]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as plain:
            # libCacheSim reads key 0 as "no request": shift every key by one.
            plain.write("\n".join(str(k + 1) for k in keys))
            plain.write("\n")
        try:
            for percent in sizes:
                capacity = max(1, round(distinct * percent / 100))
                row = {"trace": name, "percent": percent, "capacity": capacity, "results": {}}
                for policy in POLICIES:
                    reader = lcs.TraceReader(plain.name, lcs.TraceType.PLAIN_TXT_TRACE)
                    try:
                        miss_ratio, _ = getattr(lcs, policy)(capacity).process_trace(reader)
                        row["results"][policy] = 1.0 - miss_ratio
                    except Exception as error:  # a policy that cannot run at this size
                        print(f"{name} {percent}% {policy}: {error}", file=sys.stderr)
                print(json.dumps(row), flush=True)
        finally:
            os.unlink(plain.name)


if __name__ == "__main__":
    main()
