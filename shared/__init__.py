"""Everything both functions use: parsing models, settings, storage, Bot Framework auth, outbound clients.

Submodules are imported where they are used so that a cold start pays only for what the request needs.
"""
