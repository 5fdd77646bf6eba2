"""The application: the `mtlsweep` command line, the demo (`make demo`) and the docs generator (`mtlsweep docs`)."""
