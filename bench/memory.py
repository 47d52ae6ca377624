"""Memory under bursts of large images: the budget and the allocator settings, beside a baseline of neither.

    nice -n 15 .venv/bin/python bench/memory.py                       # 16 × 12 MP × 3 rounds per configuration
    nice -n 15 .venv/bin/python bench/memory.py --side 7000 --rounds 5 # the issue's 49 MP burst (slow)
    nice -n 15 .venv/bin/python bench/memory.py --side 7000 --only budget+release --timeout 30  # with 503s

Each configuration runs its own server (127.0.0.1) through tests/reliability/test_reliability_memory.py's run_bursts:
`concurrency` simultaneous POST /harmonize of one real photo, `rounds` times; it prints idle, peak and settled
RSS per round and the answers. Configurations (S2CRNET_* and glibc MALLOC_* variables):
  baseline            no budget, allocator untouched (what the service did before issue 19)
  budget              max_inflight_pixels only
  budget+release      the defaults: budget, fixed mmap threshold, malloc_trim after large requests
  budget+arena2       the defaults plus MALLOC_ARENA_MAX=2 (fewer per-thread heaps)
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from test_reliability_memory import run_bursts  # noqa: E402

UNBOUNDED = str(10**12)


def configurations(budget: int) -> dict[str, dict]:
    return {
        "baseline": {"S2CRNET_MAX_INFLIGHT_PIXELS": UNBOUNDED, "S2CRNET_RELEASE_MEMORY": "false"},
        "budget": {"S2CRNET_MAX_INFLIGHT_PIXELS": str(budget), "S2CRNET_RELEASE_MEMORY": "false"},
        "budget+release": {"S2CRNET_MAX_INFLIGHT_PIXELS": str(budget)},
        "budget+arena2": {"S2CRNET_MAX_INFLIGHT_PIXELS": str(budget), "MALLOC_ARENA_MAX": "2"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3500, help="image side in pixels (default 3500: 12 MP)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=200_000_000, help="max_inflight_pixels (default 200 MP)")
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="S2CRNET_REQUEST_TIMEOUT_S (default 600: every request waits its turn; the service's "
                             "default 30 gives 503s past 15 s of waiting)")
    args = parser.parse_args()
    rows = []
    for name, env in configurations(args.budget).items():
        if args.only and name not in args.only:
            continue
        env = {**env, "S2CRNET_REQUEST_TIMEOUT_S": str(args.timeout)}
        figures = run_bursts(env, args.side, args.concurrency, args.rounds)
        rows.append((name, figures))
        sys.stdout.write(f"{name}: {figures}\n")
        sys.stdout.flush()
    sys.stdout.write(f"\n{args.concurrency} × {args.side}² JPEG × {args.rounds} rounds\n\n")
    sys.stdout.write("| configuration | idle MB | peak MB per round | settled MB per round | answers |\n")
    sys.stdout.write("|---|---|---|---|---|\n")
    for name, f in rows:
        answers = ", ".join(f"{n} × {s}" for s, n in sorted(f["statuses"].items()))
        sys.stdout.write(f"| {name} | {f['idle_rss_mb']:.0f} | {' / '.join(f'{p:.0f}' for p in f['peak_rss_mb'])} "
                         f"| {' / '.join(f'{p:.0f}' for p in f['settled_rss_mb'])} | {answers} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
