"""Object storage: one small contract (:class:`~archiver.storage.base.Store`), backends chosen by URL scheme.

Storage knows no policy; nothing here imports :mod:`archiver.policy`.
"""
