"""Bisect the smallest TFLM arena in a child process: ``python _probe.py MODEL FEED.npz LOW HIGH GRANULE``.

``LOW == HIGH`` tries that one arena size and prints ``ok N`` or ``fail N``.

Kept free of edgefleet imports so it starts fast. TFLM's ``MicroInterpreter`` can crash the
process (SIGSEGV) when its arena is a few bytes short, instead of failing allocation; so the
parent runs this, reads ``try N`` / ``ok N`` / ``fail N`` lines, and counts a crash during
``try N`` as a failure at N. ``LOW`` must fail and ``HIGH`` must run.
"""

import os
import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime


def main() -> None:
    model_path, feed_path, low, high, granule = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    with open(model_path, "rb") as f:
        model = f.read()
    with np.load(feed_path) as z:
        values = [z[f"in{i}"] for i in range(len(z.files))]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # TFLM logs every failed allocation
    if low == high:
        print(f"try {low}", flush=True)
        print(f"{'ok' if _runs(model, values, low) else 'fail'} {low}", flush=True)
        return
    while high - low > granule:
        middle = (low + high) // 2 // granule * granule
        if middle <= low:
            middle = low + granule
        print(f"try {middle}", flush=True)
        if _runs(model, values, middle):
            print(f"ok {middle}", flush=True)
            high = middle
        else:
            print(f"fail {middle}", flush=True)
            low = middle
    print(f"done {high}", flush=True)


def _runs(model, values, arena):
    try:
        it = runtime.Interpreter.from_bytes(model, arena_size=arena)
        for index, value in enumerate(values):
            it.set_input(value, index)
        it.invoke()
    except RuntimeError:
        return False
    return True


if __name__ == "__main__":
    main()
