"""Pydantic models at the connector's edges: the Payment and the subscription deliveries."""
