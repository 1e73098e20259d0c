"""The knowledge base: chunking, sentence embeddings, the FAISS index, retrieval, coverage of
what users ask, and the weekly refresh job that registers each index as a version."""
