"""The conversion vocabulary: the precision plan, precisions, ranges, Casts and the pass runner."""
