"""Protocols turn one ``cpbench run`` into concrete jobs (train once, evaluate many)."""
