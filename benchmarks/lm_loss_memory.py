"""Peak memory and time of the LM loss (forward + backward) on the CPU: the plain one-shot linear + cross-entropy
(``chunk_size=None``: one [N, V] float32 logits tensor, and its gradient) beside the chunked one
(:class:`zoo.losses.ChunkedLinearCrossEntropy`, O(chunk × V)).

``causal_lm_loss`` on hidden states [B, L, D] (float32, requiring grad) whose labels are all supervised, so
N = B·(L−1) tokens, and an LM head [V, D] + [V] (requiring grad). Each measurement runs in its own process:
the peak is the process's maximum resident set size (``ru_maxrss``) after the loss's forward and backward minus
its value once the inputs are allocated and touched, so it counts the loss's own tensors plus the head's
gradients ([V, D] + [V], the same for every variant). Variants are interleaved over ``--repeats`` rounds;
median and range are printed. No asserts: a measurement, not a test.

    python benchmarks/lm_loss_memory.py [--vocab 32000] [--dim 1024] [--tokens 4096] [--chunks 1024 256]
                                        [--repeats 3] [--threads 1]

The defaults use D = 1024 rather than a 7B model's 4096 to keep a one-thread CPU run short; the logits' share of
the memory scales with N × V, not D.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 2**20


def max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def worker(args: argparse.Namespace) -> None:
    from zoo.losses import causal_lm_loss

    torch.set_num_threads(args.threads)
    chunk_size = None if args.worker == "plain" else int(args.worker)
    rows = 4
    torch.manual_seed(0)
    hidden = torch.randn(rows, args.tokens // rows + 1, args.dim, requires_grad=True)
    labels = torch.randint(0, args.vocab, hidden.shape[:2])
    head = torch.nn.Linear(args.dim, args.vocab)
    with torch.no_grad():
        head.weight.mul_(0.02)
    tiny = torch.randn(1, 3, 8, requires_grad=True), torch.ones(1, 3, dtype=torch.long), torch.randn(5, 8)
    causal_lm_loss(*tiny, chunk_size=chunk_size)["lm_loss"].backward()  # first-call set-up is not the loss's
    baseline = max_rss_bytes()
    start = time.perf_counter()
    loss = causal_lm_loss(hidden, labels, head.weight, head.bias, chunk_size=chunk_size)["lm_loss"]
    loss.backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"peak": max_rss_bytes() - baseline, "seconds": seconds, "loss": loss.item()}))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=4096, help="supervised tokens N (a multiple of 4)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    variants = ["plain", *map(str, args.chunks)]
    results = {name: [] for name in variants}
    for round_ in range(args.repeats):
        for name in variants if round_ % 2 == 0 else variants[::-1]:
            command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    n, v, d = args.tokens, args.vocab, args.dim
    print(f"device: CPU ({cpu_name()}), {args.threads} thread(s), torch {torch.__version__}")
    reduced = " (a 7B model has D = 4096: reduced to keep the CPU run short)" if d < 4096 else ""
    print(f"causal_lm_loss forward + backward, float32: N = {n} supervised tokens, V = {v}, D = {d}{reduced}; "
          f"{args.repeats} interleaved runs each, one process per run")  # fmt: skip
    print(f"for scale: [N, V] float32 logits = {n * v * 4 / MIB:.0f} MiB; [V, D] = {v * d * 4 / MIB:.0f} MiB")
    print(f"{'loss':<16} {'peak RSS increase MiB (median, range)':<40} {'seconds (median, range)':<26} {'loss value'}")
    for name in variants:
        peaks = [r["peak"] / MIB for r in results[name]]
        times = [r["seconds"] for r in results[name]]
        label = "plain" if name == "plain" else f"chunked {name}"
        memory = f"{statistics.median(peaks):8.0f}  [{min(peaks):.0f}, {max(peaks):.0f}]"
        seconds = f"{statistics.median(times):7.2f}  [{min(times):.2f}, {max(times):.2f}]"
        print(f"{label:<16} {memory:<40} {seconds:<26} {results[name][0]['loss']:.6f}")


if __name__ == "__main__":
    main()
