"""Command line: ``lora-dispatch info | check | bench``."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import info

    data = info(args.device)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    print(
        f"platform   {data['platform']}  ({data['device']}: {data['device_name']}, "
        f"arch {data['arch']}, {data['compute_units']} compute units, warp {data['warp_size']})"
    )
    print(f"backend    {data['backend']}  -- {data['backend_reason']}")
    print(f"torch      {data['torch']}")
    print(f"triton     {data['triton']}")
    print(f"launcher   {data['launcher']}")
    for name, b in data["backends"].items():
        state = "auto" if b["automatic"] else ("forced only" if b["runs_here"] else "unavailable")
        why = f" ({b['why_not']})" if b["why_not"] and not b["automatic"] else ""
        print(f"  {name:<10} priority {b['priority']:>4}  {state}{why}")
    if data["env"]:
        print("env        " + " ".join(f"{k}={v}" for k, v in data["env"].items()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .bench.timing import format_table
    from .check import run_checks

    rows = run_checks(args.device, quick=args.quick)
    cols = [
        "case",
        "dtype",
        "backend",
        "T",
        "K",
        "N",
        "add_lora_err",
        "shrink_expand_err",
        "tol",
        "untouched_ok",
        "ms",
        "ok",
    ]
    print(format_table(rows, cols))
    bad = [r for r in rows if not r["ok"]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if bad:
        print(f"\nFAILED: {len(bad)} of {len(rows)} checks exceed the tolerance", file=sys.stderr)
        return 1
    print(f"\nall {len(rows)} checks within tolerance")
    return 0


def _cmd_bench(rest: list[str]) -> int:
    try:
        from .bench.suite import main as suite_main
    except ImportError as exc:
        print(f"benchmark suite unavailable: {exc}", file=sys.stderr)
        return 2
    return int(suite_main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lora-dispatch`` console script."""
    parser = argparse.ArgumentParser(prog="lora-dispatch", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="platform, device, selected backend, versions, launcher mode")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("check", help="selected backend vs a float64 truth on this device")
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH")
    sub.add_parser(
        "bench", help="benchmark suite (see `lora-dispatch bench --help`)", add_help=False
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return _cmd_bench(argv[1:])
    args = parser.parse_args(argv)
    return {"info": _cmd_info, "check": _cmd_check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
