"""TF Serving REST client and the local TF-Serving-compatible server."""
