"""Benchmarks: RTVLM (judged 0-10 scores), UnsafeConcepts (perception, alignment, modality gap), head metrics."""
