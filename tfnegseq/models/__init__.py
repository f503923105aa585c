"""Keras models, one per family, registered for serialization.

    from tfnegseq.models import CtrModel, SequentialRecommender
"""

from tfnegseq.models.ctr import CtrModel
from tfnegseq.models.sequential import SequentialRecommender

__all__ = ["CtrModel", "SequentialRecommender"]
