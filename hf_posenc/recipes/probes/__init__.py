"""Long-context retrieval probes (LongEmbed-style passkey and needle retrieval), built in and offline.

Accuracy on a classification task mixes length generalization with everything else. Synthetic retrieval probes
isolate it: every document hides one key at a recorded depth, every query asks for one key, and only how the model
reads positions separates the candidates (Zhu et al. 2024, LongEmbed, arXiv:2404.12096).

```python
from hf_posenc.recipes.probes import ProbeConfig, ProbeMethod, run_probes

grouped = ProbeMethod("grouped", encoding="learned", position_ids="grouped", max_length=4096, dynamic=True)
config = ProbeConfig(methods=[grouped])
results = run_probes(config)  # runs/probe/results.{json,md,png}, heatmaps.png
```

or `hf-posenc probe --position_ids grouped --max_length 4096 --dynamic`. Modules: `data` (generation and cache),
`embed` (methods, embeddings, scoring), `run` (runs, resume, command line), `report` (tables and plots).
"""

from .data import TASKS, ProbeDocument, ProbeGroup, ProbeSet, ProbeSettings, generate_probe_set, load_probe_set
from .embed import (
    DynamicEmbedder,
    ModelEmbedder,
    ProbeMethod,
    apply_method,
    build_model,
    chunk_document,
    evaluate,
    input_limit,
    preset_methods,
    retrieval_hits,
)
from .report import render
from .run import SIZING, ProbeConfig, main, register_cli, run_probes

__all__ = [
    "SIZING",
    "TASKS",
    "DynamicEmbedder",
    "ModelEmbedder",
    "ProbeConfig",
    "ProbeDocument",
    "ProbeGroup",
    "ProbeMethod",
    "ProbeSet",
    "ProbeSettings",
    "apply_method",
    "build_model",
    "chunk_document",
    "evaluate",
    "generate_probe_set",
    "input_limit",
    "load_probe_set",
    "main",
    "preset_methods",
    "register_cli",
    "render",
    "retrieval_hits",
    "run_probes",
]
