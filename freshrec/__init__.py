"""freshrec: streaming real-time recommender (Kafka -> Faust -> Redis)."""
__version__ = "0.1.0"
