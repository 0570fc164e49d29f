"""Static facts about a model shared by report and --auto: per-node audit, shapes, FLOP estimates."""
