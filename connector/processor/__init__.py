"""Reconciling one payment: pure decisions (``decisions``) and the protocol that acts on them (``reconcile``)."""
