"""services/ranker"""
