"""tfnegseq: recommender models that learn from what users skip as well as what they engage with."""

__version__ = "0.1.0"
