"""Ranker service: the public Recommend API (encode, filter, score, top-k, popularity fallback)."""
