"""``fundusfm check-results``: a results tree verified against its recorded digests."""

from __future__ import annotations

import argparse
import sys


def check_results_main(argv: list[str] | None = None) -> int:
    """``fundusfm check-results``: report every file of the results tree that no longer
    matches what the study recorded (exit 1 when any does); run it in the study's folder."""
    from fundusfm.audit.results import check_results

    p = argparse.ArgumentParser(prog="fundusfm check-results", description=check_results_main.__doc__)
    p.add_argument("--results", default="results", help="results folder [results]")
    p.add_argument("--config", default=None, help="study config: also check that every run of its grid is there")
    a = p.parse_args(argv)
    config = None
    if a.config:
        from fundusfm import config as fcfg

        config = fcfg.load(a.config)
    problems = check_results(a.results, config)
    for line in problems:
        print(line)
    print(f"fundusfm check-results: {a.results}: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0
