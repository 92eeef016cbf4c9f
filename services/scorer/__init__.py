"""services/scorer"""
