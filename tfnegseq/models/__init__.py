"""Keras models, one per family, registered for serialization.

    from tfnegseq.models import CtrModel
"""

from tfnegseq.models.ctr import CtrModel

__all__ = ["CtrModel"]
