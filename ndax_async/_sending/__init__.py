"""One signed, retried request: the transport, its retry policy, limits and HTTP senders."""
