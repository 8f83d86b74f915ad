"""Examples of ndax-async in use: a FastAPI signup service and a load generator for it."""
