"""services/encoder"""
