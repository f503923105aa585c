"""One entry point for the experiments: `python -m tfnegseq.experiments NAME --config ...`.

    main                Table 2: backbones x {Pos Seq, Pos Seq + TAPF, Mix Seq + PB,
                        Mix Seq + TAPF} (tfnegseq.experiments.table2)
    tapf-ablation, ratio-sweep, length-scaling, construction, negative-ablation,
    analyses
                        the mixed-polarity paper's studies (tfnegseq.experiments.polarity)
    cain                CAIN's studies (tfnegseq.experiments.cain)
    sine                SINE's tables and sweeps (tfnegseq.experiments.sine)
    merge               adds the records of sweep files written by other processes
                        (their --results-dir) to one (tfnegseq.experiments.records)

Everything after NAME goes to that module's CLI (`--help` there).
"""

from __future__ import annotations

import sys

from tfnegseq.experiments import polarity

NAMES = ("main", *polarity.STUDIES, "cain", "sine", "merge")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NAMES:
        given = f" Received: {argv[0]!r}" if argv else ""
        print(f"usage: python -m tfnegseq.experiments NAME [options]; NAME is one of "
              f"{', '.join(NAMES)}.{given}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name == "main":
        from tfnegseq.experiments import table2

        return table2.main(rest)
    if name in polarity.STUDIES:
        return polarity.main(["--study", name, *rest])
    if name == "merge":
        from tfnegseq.experiments import records

        return records.merge_main(rest)
    if name == "cain":
        from tfnegseq.experiments import cain

        return cain.main(rest)
    from tfnegseq.experiments import sine

    return sine.main(rest)


if __name__ == "__main__":
    sys.exit(main())
