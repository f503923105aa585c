"""Entry point: python -m beam_jobs.score_samples --model_dir EXPORTED_VERSION_DIR
--input 'DIR/test/*.tfrecord.gz' --output PREFIX [Beam options].

All logic lives in `tfnegseq.scoring`, so Dataflow workers need only the built tfnegseq
wheel (`--extra_package`).
"""

import sys

from tfnegseq.scoring import main

if __name__ == "__main__":
    sys.exit(main())
