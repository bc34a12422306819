"""flux-conduit: stream JSON packets from Flux compute jobs to a datastore job."""

__version__ = "0.1.0"
