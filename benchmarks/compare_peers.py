#!/usr/bin/env python3
"""The app's training throughput against the PyTorch (and optionally JAX) peers, interleaved in
one run on one machine, so that the ratio is measured under the same conditions.

    python -m benchmarks.compare_peers --peer-python /tmp/peers/bin/python
    python -m benchmarks.compare_peers --app-python /tmp/venvs/dml/bin/python \\
        --peer-python /tmp/peers/bin/python --rounds 5 --jax
    python -m benchmarks.compare_peers --backends tensorflow,torch   # Keras on both, and torch

Each round runs, one after the other: the app's benchmark on one fixed batch
(train_throughput.py --model-only, like the peers), the app's benchmark through its input
pipeline, then peer_torch.py as its README runs it, and peer_torch.py with
OMP_WAIT_POLICY=PASSIVE (PyTorch's OpenMP threads spin while they wait; on a machine shared
with other jobs that costs it most of its speed, and the passive setting is the fairer
yardstick there). With --backends, the app's two runs are made once per Keras backend
(--backend tensorflow, --backend torch), in that order, in every round. The ratios compare the app with the faster of the two PyTorch runs of the
same round; the medians over rounds are printed with their range. The peer scripts are found
in --peers (default: ../shared/peers beside the repository, or PEERS_DIR).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = ["-m", "benchmarks.train_throughput"]      # run from ROOT


def default_peers() -> str:
    candidates = [os.environ.get("PEERS_DIR", ""),
                  os.path.join(ROOT, "..", "shared", "peers"),
                  os.path.join(ROOT, "..", "..", "shared", "peers")]
    return next((c for c in candidates if c and os.path.isdir(c)), candidates[1])


def run(command, env=None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    if result.returncode:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def app_rate(output: str) -> float:
    """The app's rate over all timed steps (the peers also time all their steps as one)."""
    return float(re.search(r"overall ([\d.]+) images/s", output).group(1))


def peer_rate(output: str) -> float:
    return float(re.search(r"img/s=([\d.]+)", output).group(1))


def ratio_summary(ratios) -> str:
    return (f"median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
            f"max {max(ratios):.2f})")


def summary(values) -> str:
    return (f"median {statistics.median(values):7.1f}  (min {min(values):.1f}, "
            f"max {max(values):.1f}, n={len(values)})")


def report(rows: dict, headers: dict, apps: list, backends: list, batch: str,
           rounds: int) -> None:
    """Prints each arm's images/s and the ratios: the app to the faster PyTorch eager of
    each round, one backend to the other, the app to JAX."""
    print("\n" + "\n".join(headers.values()))
    print(f"batch {batch}, {rounds} rounds, images/s over all timed steps:")
    for name, values in rows.items():
        if values:
            print(f"  {name:22s} {summary(values)}")
    best_torch = [max(a, b) for a, b in zip(rows["torch"], rows["torch, OMP passive"])]
    for name in apps:
        ratios = [a / t for a, t in zip(rows[name], best_torch)]
        print(f"ratio {name} / faster PyTorch eager of the round: {ratio_summary(ratios)}")
    if len(backends) > 1:
        for kind in ("fixed batch", "input pipeline"):
            ratios = [a / b for a, b in zip(rows[f"app {backends[1]}, {kind}"],
                                            rows[f"app {backends[0]}, {kind}"])]
            print(f"ratio app {backends[1]} / app {backends[0]}, {kind}: "
                  f"{ratio_summary(ratios)}")
    if rows["jax"]:
        ratios = [a / j for a, j in zip(rows[apps[0]], rows["jax"])]
        print(f"ratio app, fixed batch / JAX jit: {ratio_summary(ratios)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-python", default=sys.executable,
                        help="Python of the stack to measure (default: this one)")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="Python with torch (and jax, flax, optax for --jax)")
    parser.add_argument("--peers", default=default_peers(), help="folder of peer_torch.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10,
                        help="app: steps per window (5 windows); peers: 5 x this many steps")
    parser.add_argument("--jax", action="store_true", help="also run peer_jax.py")
    parser.add_argument("--backends", default="tensorflow",
                        help="the app's Keras backends, comma-separated (tensorflow,torch)")
    args = parser.parse_args()

    batch, steps = str(args.batch_size), str(args.steps)
    backends = args.backends.split(",")
    app = [args.app_python, *APP, "--batch-size", batch, "--steps", steps, "--windows", "5"]
    peer_steps = str(5 * args.steps)
    torch_cmd = [args.peer_python, os.path.join(args.peers, "peer_torch.py"),
                 "--batch", batch, "--steps", peer_steps]
    jax_cmd = [args.peer_python, os.path.join(args.peers, "peer_jax.py"),
               "--batch", batch, "--steps", peer_steps]
    apps = [f"app{' ' + b if len(backends) > 1 else ''}, {kind}" for b in backends
            for kind in ("fixed batch", "input pipeline")]
    rows = {name: [] for name in (*apps, "torch", "torch, OMP passive", "jax")}
    headers = {}
    for round_ in range(1, args.rounds + 1):
        for backend, fixed, pipeline in zip(backends, apps[::2], apps[1::2]):
            out = run(app + ["--backend", backend, "--model-only"])
            headers[backend] = out.splitlines()[0]
            rows[fixed].append(app_rate(out))
            rows[pipeline].append(app_rate(run(app + ["--backend", backend])))
        rows["torch"].append(peer_rate(run(torch_cmd)))
        rows["torch, OMP passive"].append(
            peer_rate(run(torch_cmd, {"OMP_WAIT_POLICY": "PASSIVE"})))
        if args.jax:
            rows["jax"].append(peer_rate(run(jax_cmd)))
        print(f"round {round_}: " + ", ".join(f"{name} {values[-1]:.1f}"
                                              for name, values in rows.items() if values),
              flush=True)

    report(rows, headers, apps, backends, batch, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
