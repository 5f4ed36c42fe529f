"""Run the speed and memory benchmark: `python benchmarks/run.py --preset quick|targets|full`.

The same as `hf-posenc bench`; results go to `benchmarks/results/<preset>.json` and `.md`. See `hf_posenc/bench/`.
"""

import sys

from hf_posenc.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
