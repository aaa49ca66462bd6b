"""The online worker: faust agents for clicks, items and recall requests (``recall worker``)."""
