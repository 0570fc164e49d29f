"""The compiler driver: options, the conversion pipeline's assembly and the public convert API."""
