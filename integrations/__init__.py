"""Adapters that make existing code run on scoopexec: joblib, DEAP, SCOOP programs.

Installed as ``scoopexec.integrations``; the core library never imports it.
"""
