"""What goes on the wire: canonical JSON, signing, request_ids, field rules, the converter.

Nothing here knows of HTTP; the sending layer and the client build on it.
"""
