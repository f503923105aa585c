"""Entry point: python -m beam_jobs.build_samples --config CONFIG [--set k=v] [Beam options].

All logic lives in `tfnegseq.data.job` (driver) and `tfnegseq.data.beam` (transforms),
so Dataflow workers need only the built tfnegseq wheel (`--extra_package`).
"""

import sys

from tfnegseq.data.job import main

if __name__ == "__main__":
    sys.exit(main())
