"""HTTP routes; each module holds one ``router``. Routes stay thin: parse, call the recommender, answer."""

from service.routes import admin, health, interactions, model, recommend

__all__ = ["admin", "health", "interactions", "model", "recommend"]
