"""Long-context passkey and needle retrieval probes (LongEmbed-style) for a checkpoint and its methods.

    python recipes/probe.py --position_ids grouped --max_length 4096            # one method, all-MiniLM-L6-v2
    python recipes/probe.py --config recipes/configs/probe_minilm.json --resume  # the committed study

The same as `hf-posenc probe`; see `hf_posenc.recipes.probes`.
"""

import sys

from hf_posenc.recipes.probes import main

if __name__ == "__main__":
    sys.exit(main())
