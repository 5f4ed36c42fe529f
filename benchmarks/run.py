"""Run the speed and memory benchmark of issue 6: `python benchmarks/run.py --preset quick|targets|full`.

The same as `hf-posenc bench`; results go to `benchmarks/results/<preset>.json` and `.md`. See `hf_posenc/bench.py`.
"""

import sys

from hf_posenc.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
