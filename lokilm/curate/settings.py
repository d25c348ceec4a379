"""The `curate:` section of a config: one small dataclass per stage, in the order the data flows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ReadSettings:
    max_doc_bytes: int = 64_000_000  # a larger single document is removed as "document_too_large"


@dataclass
class NormaliseSettings:
    enabled: bool = True
    form: Literal["NFC", "NFKC"] = "NFC"


@dataclass
class HeuristicsSettings:
    """datatrove's Gopher and C4 rules. Defaults are datatrove's, except where books and plays need room:
    no upper word limit (a novel is one document), no C4 line rules (verse lines have no full stop), and no
    C4 curly-bracket rule (meant for code in web pages, it dropped 25 Gutenberg books and 6 plays, 13 MB of
    the shared corpus, for a single "{" each)."""
    enabled: bool = True
    engine: Literal["lokilm", "datatrove"] = "lokilm"  # lokilm's fast filters, or datatrove's: the same decisions
    gopher_quality: bool = True
    min_doc_words: int = 50
    max_doc_words: int | None = None
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    gopher_repetition: bool = True
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    c4: bool = True
    c4_min_num_sentences: int = 5
    c4_filter_no_terminal_punct: bool = False
    c4_min_words_per_line: int = -1
    c4_filter_curly_bracket: bool = False


@dataclass
class ExactDedupSettings:
    enabled: bool = True


@dataclass
class MinhashSettings:
    enabled: bool = True
    engine: Literal["lokilm", "datatrove"] = "lokilm"  # lokilm's fast signatures or datatrove's: identical files
    n_grams: int = 5  # datatrove's defaults: word 5-grams, 14 bands x 8 hashes
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1


@dataclass
class EmbeddingSettings:
    """all-MiniLM-L6-v2 sentence embeddings, shared by the classifier, SemDeDup and prototype pruning."""
    # sentence-transformers: MiniLM in PyTorch; onnx: MiniLM through ONNX Runtime (CPU); model2vec: a static
    # model distilled from MiniLM (lokilm/curate/embeddings.py; figures per backend in docs/LOG.md)
    backend: Literal["sentence-transformers", "onnx", "model2vec"] = "sentence-transformers"
    device: str = "cpu"  # sentence-transformers only: cuda runs fp16/bf16 batches of gpu_batch_size
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA, fp32 on the CPU
    batch_size: int = 64
    gpu_batch_size: int = 1024
    onnx_int8: bool = False  # int8 dynamic quantisation of the ONNX model (faster, agrees less: docs/LOG.md)
    model2vec_dims: int = 256  # PCA dimensions of the distilled static model
    chunk_words: int = 128  # a long document is embedded as the mean of chunks of this many words (~150 word pieces)...
    max_chunks: int = 4  # ...at most this many, spread evenly over it: the embedding time is about linear in chunks
    cache_dir: str = "runs/.cache/embeddings"


@dataclass
class ClassifierSettings:
    enabled: bool = True
    path: str = "runs/.cache/quality_classifier.json"  # trained by `loki curate train-classifier` (or on first use)
    labels: list[str] = field(default_factory=lambda: ["data/quality_labels"])
    threshold: float = 0.5  # keep a document whose predicted quality probability is at least this
    holdout_fraction: float = 0.2
    # what the head learns from: the human labels (`labels`), the annotator's (`annotations`, from
    # `loki curate annotate`; a score of at least annotation_positive is good), or both (human wins on overlap)
    train_on: Literal["human", "annotations", "both"] = "human"
    annotations: str = "runs/.cache/annotations.jsonl"
    annotation_positive: int = 3  # FineWeb-Edu's cut on its 0-5 scale


@dataclass
class AnnotateSettings:
    """`loki curate annotate`: a local instruct model scores documents 0-5 for educational value (FineWeb-Edu's
    rubric); labels go to curate.classifier.annotations. The model is read as lokilm/distill/teachers.py reads a
    teacher: kind package (path smollm2), hf (a model folder) or gguf (a file)."""
    kind: Literal["package", "hf", "gguf"] = "package"
    path: str = "smollm2"
    gguf_file: str | None = None
    inputs: list[str] | None = None  # documents to sample from; None: data.inputs
    sample: int = 300  # documents of `inputs` to annotate (chosen by hash of id, at least min_words words)
    human_sample: int = 200  # of the human-labelled documents (classifier.labels) too, for agreement; -1: all
    min_words: int = 50  # as the Gopher rules keep; shorter documents never reach the classifier
    max_tokens: int = 384  # of each document shown to the model (its start, as FineWeb-Edu did)
    batch_size: int = 8
    seed: int = 0


@dataclass
class SemDedupSettings:
    enabled: bool = True
    eps: float = 0.05  # drop a document whose cosine similarity to a kept one in its cluster exceeds 1 - eps
    clusters: int = 0  # 0: about sqrt(documents / 2)
    seed: int = 0


@dataclass
class PrototypeSettings:
    enabled: bool = False  # pruning pays off only when data is plentiful
    keep_fraction: float = 0.8  # keep this share of documents, the farthest from their cluster centroid...
    # ...of all documents at once (global), of each k-means cluster, or of each source (an input folder's
    # subfolder, e.g. gutenberg/ and wikipedia/ under data/corpus; clustered on its own), so each kind keeps its share
    per: Literal["global", "cluster", "source"] = "source"
    clusters: int = 0  # 0: about sqrt(documents / 2)
    seed: int = 0


@dataclass
class DecontaminateSettings:
    enabled: bool = True
    n: int = 13  # word n-grams, lower-cased, punctuation removed
    mode: Literal["remove", "cut"] = "remove"  # drop the document, or cut the matching spans out of it
    benchmarks: str | None = None  # benchmark folder; None: the bundled data/benchmarks
    cache_dir: str = "runs/.cache/decontamination"


@dataclass
class FactsSettings:
    enabled: bool = False  # LokiLM did this; its report blames it for a poor TruthfulQA, so it is off by default


@dataclass
class ExecutorSettings:
    kind: Literal["local", "slurm", "ray"] = "local"
    tasks: int = 1  # parallel tasks for the per-document phases; the embedding phase is one task
    workers: int = 1  # local: processes at once (1: tasks run in turn in this process, no pool to start)
    slurm_partition: str | None = None
    slurm_time: str = "04:00:00"
    slurm_cpus_per_task: int = 2


@dataclass
class CurateConfig:
    enabled: bool = False  # `loki run`: curate first, then tokenize the curated output instead of data.inputs
    read: ReadSettings = field(default_factory=ReadSettings)
    normalise: NormaliseSettings = field(default_factory=NormaliseSettings)
    heuristics: HeuristicsSettings = field(default_factory=HeuristicsSettings)
    exact_dedup: ExactDedupSettings = field(default_factory=ExactDedupSettings)
    minhash: MinhashSettings = field(default_factory=MinhashSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    annotate: AnnotateSettings = field(default_factory=AnnotateSettings)
    semdedup: SemDedupSettings = field(default_factory=SemDedupSettings)
    prototypes: PrototypeSettings = field(default_factory=PrototypeSettings)
    decontaminate: DecontaminateSettings = field(default_factory=DecontaminateSettings)
    facts: FactsSettings = field(default_factory=FactsSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
