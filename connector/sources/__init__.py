"""Where deliveries come from. A source hands out raw bytes with ``ack`` and ``dead_letter``; it
knows nothing of payments."""
