"""The bottom layer: the run config of every section, its errors, and a run's identity.

``mtlsweep.config.run`` (the pydantic RunConfig, loaded from YAML, flattened to dotted keys),
``mtlsweep.config.errors`` (the user-error types and how an entry point prints them) and
``mtlsweep.config.identity`` (model family, a run's single-task baseline, fingerprints,
comparison keys and baseline protocols). Everything may import this layer; it imports nothing
of the project.
"""
