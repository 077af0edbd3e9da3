"""Does PyO3's stable ABI (the abi3 wheel) cost anything? Times the same calls in two
environments, one with the abi3 build of tierflow installed and one with a version-specific
(cp311) build, in interleaved rounds, and prints the ratio of medians (A / B: abi3's time over cp311's; 1.00 = same).

    python benches/abi3_compare.py --a /venv-abi3/bin/python --b /venv-cp311/bin/python

The cases are calls where the binding layer's share is largest (small operands: argument
parsing, NumPy array access, the buffer protocol of ``store.get``) and one decode-shape product
where the Rust kernel dominates. Each round runs every case in a fresh process of A then B
(order alternated per round) and keeps the median of 15 batches per case. Times are CPU time of
the process (``time.process_time``) on one kernel thread (``TIERFLOW_NUM_THREADS=1`` unless
``--threads``), so that other work on a shared machine inflates them less than wall time; the
spread column is the range of the per-round ratios (round r of A against round r of B).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ["matmul q8_0 1x64x64", "rms_norm 1x4096", "store.get 1 KiB", "matmul f32 1x4096x4096"]


def worker() -> None:
    import numpy as np

    import tierflow

    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((1, 64), dtype=np.float32)
    q = tierflow.quantize(rng.standard_normal((64, 64), dtype=np.float32), "q8_0")
    x4k = rng.standard_normal((1, 4096), dtype=np.float32)
    w4k = rng.standard_normal((4096, 4096), dtype=np.float32)
    g = np.ones(4096, np.float32)
    tmp = tempfile.mkdtemp()
    store = tierflow.TieredStore(tmp, tiers=[tierflow.Tier("ram", "1MiB")])
    store.put("t", np.ones(256, np.float32))
    calls = {
        "matmul q8_0 1x64x64": (lambda: tierflow.matmul(x64, q), 2000),
        "rms_norm 1x4096": (lambda: tierflow.rms_norm(x4k, g), 2000),
        "store.get 1 KiB": (lambda: store.get("t"), 2000),
        "matmul f32 1x4096x4096": (lambda: tierflow.matmul(x4k, w4k), 4),
    }
    out = {"version": tierflow.__version__, "module": tierflow._tierflow.__file__}
    for name in CASES:
        fn, n = calls[name]
        for _ in range(n // 10 + 1):
            fn()
        per_call = []
        for _ in range(15):
            t = time.process_time()
            for _ in range(n):
                fn()
            per_call.append((time.process_time() - t) / n)
        out[name] = statistics.median(per_call)
    store.close()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="Python of the environment with the abi3 build")
    ap.add_argument("--b", required=True, help="Python of the environment with the cp311 build")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", default="1", help="TIERFLOW_NUM_THREADS of the timed processes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    times: dict[str, dict[str, list[float]]] = {"a": {c: [] for c in CASES}, "b": {}}
    times["b"] = {c: [] for c in CASES}
    for r in range(args.rounds):
        order = ["a", "b"] if r % 2 == 0 else ["b", "a"]
        for who in order:
            py = getattr(args, who)
            res = json.loads(
                subprocess.run(
                    [py, __file__, "--worker", "--a", "-", "--b", "-"],
                    env={**os.environ, "TIERFLOW_NUM_THREADS": args.threads},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            if r == 0:
                print(f"{who}: tierflow {res['version']} from {res['module']}", file=sys.stderr)
            for c in CASES:
                times[who][c].append(res[c])
    print(f"{'case':26} {'A abi3 (us)':>12} {'B cp311 (us)':>13} {'A / B':>7}  per-round range")
    for c in CASES:
        a, b = statistics.median(times["a"][c]), statistics.median(times["b"][c])
        paired = [x / y for x, y in zip(times["a"][c], times["b"][c], strict=True)]
        spread = f"{min(paired):.3f}-{max(paired):.3f}"
        print(f"{c:26} {a * 1e6:12.2f} {b * 1e6:13.2f} {a / b:7.3f}  {spread}")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
