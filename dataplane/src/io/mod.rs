//! Port I/O and the worker poll loop.
