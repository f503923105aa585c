"""Keras models, one per family, registered for serialization.

    from tfnegseq.models import CainModel, CtrModel, SequentialRecommender
"""

from tfnegseq.models.cain import CainModel
from tfnegseq.models.ctr import CtrModel
from tfnegseq.models.sequential import SequentialRecommender

__all__ = ["CainModel", "CtrModel", "SequentialRecommender"]
