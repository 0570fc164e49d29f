"""The conversion core: options, the precision plan, the pass pipeline and the public convert API."""
