"""Shipped VLA recipes (JSON); a package so that wheels include them as package data."""
