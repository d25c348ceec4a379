"""Raw data in: documents read from corpus files, for curation, the tokenizer and the shards."""

from lokilm.data.readers import DataError, Document, ReadStats, iter_documents

__all__ = ["DataError", "Document", "ReadStats", "iter_documents"]
