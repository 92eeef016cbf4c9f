"""services/common"""
