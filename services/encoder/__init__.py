"""Feature encoder service: raw requests -> model input tensors (owns feature store and vocabularies)."""
