"""Static facts about a model shared by report and --auto: per-node audit, FLOP estimates, FLOP shares."""
