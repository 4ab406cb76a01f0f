"""The package's one logger: standard :mod:`logging`, emitting on the global rank 0 only."""

from __future__ import annotations

import logging

from pytorch_lightning.utilities.rank_zero import rank_zero_only


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(rank_zero_only, "rank", 0) == 0


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` that stays silent on the ranks other than 0 of a distributed run."""
    logger = logging.getLogger(name)
    if not any(isinstance(existing, _RankZero) for existing in logger.filters):
        logger.addFilter(_RankZero())
    return logger
