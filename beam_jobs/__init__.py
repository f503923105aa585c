"""Apache Beam job entry points (thin: logic lives in tfnegseq.data.beam)."""
