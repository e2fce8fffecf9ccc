"""Policies: the schema (pure dataclasses), building them from YAML, the rules, and reading the files.

Only :mod:`archiver.policy.load` imports YAML.
"""
