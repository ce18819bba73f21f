"""Pipelines built from typed specs; ``python -m tasks.run SPEC.json`` is the entry.

Tasks reach components only through the registry (a validated spec's ``build()``), never by
importing ``plugins``.
"""
